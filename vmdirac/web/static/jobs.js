// Job Monitor: selectors, the sortable paged table, Logging info / Parameters, bulk actions.
"use strict";

(() => {
  const {getJSON, postJSON, el, fillTable, setStatus, dialog, selected, fillOptions, show} = Portal;
  const LABELS = {LastUpdateTime: "LastUpdate", SubmissionTime: "Submitted"};
  const state = {sort: "JobID", dir: "DESC", start: 0, limit: 25, total: 0, checked: new Set()};
  const form = document.getElementById("job-selection");

  function query() {
    const q = new URLSearchParams();
    for (const name of ["site", "status", "minor", "app", "owner", "jobgroup"]) {
      for (const v of selected(document.getElementById(`sel-${name}`))) q.append(name, v);
    }
    for (const name of ["from", "to", "ids"]) {
      const v = document.getElementById(`sel-${name}`).value.trim();
      if (v) q.set(name, name === "to" ? `${v} 23:59:59` : v);   // "to" a day includes that day
    }
    q.set("sort", state.sort); q.set("dir", state.dir);
    q.set("start", state.start); q.set("limit", state.limit);
    return q;
  }

  async function loadSelectors() {
    try {
      const values = await getJSON("/api/jobs/selectors");
      for (const [name, list] of Object.entries(values)) fillOptions(document.getElementById(`sel-${name}`), list);
    } catch (e) { setStatus(`selectors: ${e.message}`, true); }
  }

  function details(jobId) {
    return el("span", {className: "row-actions"},
      el("button", {className: "small logging", dataset: {job: jobId}, onclick: () => showLogging(jobId)}, "Logging info"),
      el("button", {className: "small params", dataset: {job: jobId}, onclick: () => showParameters(jobId)}, "Parameters"));
  }

  async function load() {
    try {
      const page = await getJSON(`/api/jobs?${query()}`);
      state.total = page.total;
      if (state.start >= page.total && page.total > 0) {   // the page emptied (jobs deleted): go to the last one
        state.start = Math.floor((page.total - 1) / state.limit) * state.limit;
        return load();
      }
      const rows = page.records.map(r => {
        const o = {}; page.columns.forEach((c, i) => { o[c] = r[i]; }); return o;
      });
      const pickAll = el("input", {type: "checkbox", id: "pick-all", title: "select all jobs of this page",
        checked: rows.length > 0 && rows.every(r => state.checked.has(r.JobID)),
        onchange: ev => {
          for (const r of rows) ev.target.checked ? state.checked.add(r.JobID) : state.checked.delete(r.JobID);
          document.querySelectorAll("#jobs-table input.pick").forEach(box => { box.checked = ev.target.checked; });
        }});
      // The Logging info / Parameters buttons come first: on a narrow screen the last columns scroll away.
      const columns = [{key: "_sel", label: pickAll}, {key: "_details", label: ""},
                       ...page.columns.map(c => ({key: c, label: LABELS[c] || c}))];
      fillTable(document.getElementById("jobs-table"), columns, rows, (key, value, row) => {
        if (key === "_sel") {
          return el("input", {type: "checkbox", className: "pick", checked: state.checked.has(row.JobID),
                              dataset: {job: row.JobID},
                              onchange: ev => ev.target.checked ? state.checked.add(row.JobID) : state.checked.delete(row.JobID)});
        }
        if (key === "_details") return details(row.JobID);
        if (key === "Status") return el("span", {className: `st st-${String(value).toLowerCase()}`}, value);
        return null;
      }, sortBy);
      document.querySelectorAll("#jobs-table tbody tr").forEach((tr, i) => { tr.dataset.job = rows[i].JobID; });
      const th = document.querySelector(`#jobs-table th[data-col="${state.sort}"]`);
      if (th) th.classList.add(state.dir === "ASC" ? "asc" : "desc");
      const last = Math.min(state.start + state.limit, state.total);
      document.getElementById("page-info").textContent =
        state.total ? `${state.start + 1}-${last} of ${state.total}` : "no jobs";
      document.getElementById("counts").textContent =
        Object.entries(page.counts).map(([s, n]) => `${s}: ${n}`).join("  ");
      document.getElementById("server-time").textContent = `${page.server_ms} ms`;
      setStatus("");
    } catch (e) { setStatus(e.message, true); }
  }

  function sortBy(col) {
    if (col.startsWith("_")) return;
    state.dir = state.sort === col && state.dir === "DESC" ? "ASC" : "DESC";
    state.sort = col; state.start = 0; load();
  }

  async function showLogging(jobId) {
    try {
      const info = await getJSON(`/api/jobs/${jobId}/logging`);
      const table = el("table", {className: "grid", id: "logging-table"}, el("thead"), el("tbody"));
      fillTable(table, info.columns, info.records);
      dialog(`Logging info of job ${jobId}`, table);
    } catch (e) { setStatus(e.message, true); }
  }

  async function showParameters(jobId) {
    try {
      const info = await getJSON(`/api/jobs/${jobId}/parameters`);
      const rows = [...Object.entries(info.attributes), ...Object.entries(info.parameters)]
        .map(([k, v]) => ({Name: k, Value: show(v)}));
      const table = el("table", {className: "grid", id: "parameters-table"}, el("thead"), el("tbody"));
      fillTable(table, ["Name", "Value"], rows);
      dialog(`Parameters of job ${jobId}`, table);
    } catch (e) { setStatus(e.message, true); }
  }

  async function act(action) {
    const ids = Array.from(state.checked);
    if (!ids.length) { setStatus("select jobs first (the boxes on the left)", true); return; }
    const shown = ids.length > 20 ? `${ids.slice(0, 20).join(", ")}, ...` : ids.join(", ");
    if (!confirm(`${action} ${ids.length} job(s): ${shown}?`)) return;
    const list = document.getElementById("action-results");
    try {
      const out = await postJSON("/api/jobs/action", {action, ids});
      list.replaceChildren(...out.results.map(r => el("li", {className: r.ok ? "ok" : "failed", dataset: {job: r.id}},
        `${action} job ${r.id}: ${r.ok ? "done" : r.message}`)));
      state.checked.clear();
      load(); loadSelectors();   // new statuses (Killed, Deleted...) become selectable
    } catch (e) { setStatus(e.message, true); }
  }

  form.addEventListener("submit", ev => { ev.preventDefault(); state.start = 0; load(); });
  form.addEventListener("reset", () => setTimeout(() => { state.start = 0; load(); }, 0));
  document.getElementById("refresh").addEventListener("click", () => { loadSelectors(); load(); });
  document.getElementById("first").addEventListener("click", () => { state.start = 0; load(); });
  document.getElementById("prev").addEventListener("click", () => { state.start = Math.max(0, state.start - state.limit); load(); });
  document.getElementById("next").addEventListener("click", () => {
    if (state.start + state.limit < state.total) { state.start += state.limit; load(); } });
  document.getElementById("last").addEventListener("click", () => {
    state.start = Math.max(0, Math.floor((state.total - 1) / state.limit) * state.limit); load(); });
  document.getElementById("page-size").addEventListener("change", ev => {
    state.limit = Number(ev.target.value); state.start = 0; load(); });
  for (const a of ["kill", "reschedule", "delete"]) {
    document.getElementById(`act-${a}`).addEventListener("click", () => act(a));
  }
  setInterval(() => { if (document.getElementById("autorefresh").checked && !document.hidden) load(); }, 15000);
  const initial = new URLSearchParams(location.search).get("ids");
  if (initial) document.getElementById("sel-ids").value = initial;
  loadSelectors();
  load();
})();
