// Launch Pad: the form (fields, JDL, sandbox files) posted as multipart; the new ids link to the
// Job Monitor.
"use strict";

(() => {
  const {postForm, el, setStatus} = Portal;
  const form = document.getElementById("launchpad");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const button = document.getElementById("lp-submit");
    const result = document.getElementById("lp-result");
    button.disabled = true;
    try {
      const out = await postForm("/api/submit", new FormData(form));
      result.replaceChildren(el("p", {className: "ok", id: "lp-submitted"}, "Submitted: ",
        ...out.ids.flatMap((id, i) => [i ? ", " : "", el("a", {href: `/jobs?ids=${id}`, className: "job-link", dataset: {job: id}}, `job ${id}`)])));
      setStatus("");
    } catch (e) {
      result.replaceChildren(el("p", {className: "failed", id: "lp-error"}, e.message));
    } finally { button.disabled = false; }
  });
})();
