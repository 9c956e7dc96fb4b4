// Proxy upload: the PKCS#12 file and password go in one multipart POST; the password field is
// cleared at once, whatever the answer.
"use strict";

(() => {
  const {getJSON, postForm, el, fillTable, setStatus} = Portal;
  const form = document.getElementById("proxy-form");

  async function list() {
    try {
      const rows = await getJSON("/api/proxy/list");
      const cols = rows.length ? Object.keys(rows[0]) : ["DN", "group", "expires"];
      fillTable(document.getElementById("proxies-table"), cols, rows);
    } catch (e) { setStatus(`stored proxies: ${e.message}`, true); }
  }

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const data = new FormData(form);
    document.getElementById("p12-password").value = "";
    const out = document.getElementById("proxy-result");
    try {
      const r = await postForm("/api/proxy/upload", data);
      out.replaceChildren(el("dl", {id: "proxy-uploaded", className: "ok"},
        ...Object.entries(r).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, Portal.show(v))])));
      list();
    } catch (e) {
      out.replaceChildren(el("p", {className: "failed", id: "proxy-error"}, e.message));
    }
  });
  list();
})();
