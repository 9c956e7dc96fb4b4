// Virtual Machines: instances (status filter, paging), History Log and Load vs Jobs plot of one,
// Stop for operators, running pods and endpoints.
"use strict";

(() => {
  const {getJSON, postJSON, el, fillTable, setStatus, selected} = Portal;
  const COLUMNS = [{key: "_sel", label: ""}, {key: "InstanceID", label: "ID"}, "Image", "EndPoint", "Status",
                   {key: "EndpointVMID", label: "Endpoint VM ID"}, "IP", "Load", "Uptime", "Jobs",
                   {key: "LastUpdate", label: "Last Update (UTC)"}, "Error", {key: "_more", label: ""}];
  const state = {start: 0, limit: 25, total: 0, checked: new Set()};
  const mayStop = document.getElementById("vm-section").dataset.mayStop === "yes";

  async function load() {
    const q = new URLSearchParams({start: state.start, limit: state.limit});
    for (const s of selected(document.getElementById("vm-status"))) q.append("status", s);
    try {
      const page = await getJSON(`/api/vms?${q}`);
      state.total = page.total;
      const cols = mayStop ? COLUMNS : COLUMNS.filter(c => c.key !== "_sel");
      fillTable(document.getElementById("vm-table"), cols, page.records, (key, value, row) => {
        if (key === "_sel") return el("input", {type: "checkbox", checked: state.checked.has(row.InstanceID),
          onchange: ev => ev.target.checked ? state.checked.add(row.InstanceID) : state.checked.delete(row.InstanceID)});
        if (key === "_more") return el("button", {className: "small history", dataset: {vm: row.InstanceID},
                                                  onclick: () => detail(row.InstanceID)}, "History");
        if (key === "Uptime") return uptime(value);
        return null;
      });
      document.querySelectorAll("#vm-table tbody tr").forEach((tr, i) => { tr.dataset.vm = page.records[i].InstanceID; });
      document.getElementById("vm-page-info").textContent = state.total
        ? `${state.start + 1}-${Math.min(state.start + state.limit, state.total)} of ${state.total}` : "no instances";
      document.getElementById("vm-counts").textContent =
        Object.entries(page.counts).map(([s, n]) => `${s}: ${n}`).join("  ");
    } catch (e) { setStatus(e.message, true); }
  }

  function uptime(seconds) {   // as DIRAC shows it: 1d 02:03:04
    const s = Math.max(0, Math.round(seconds || 0)), d = Math.floor(s / 86400);
    const hms = [Math.floor(s % 86400 / 3600), Math.floor(s % 3600 / 60), s % 60].map(n => String(n).padStart(2, "0")).join(":");
    return d ? `${d}d ${hms}` : hms;
  }

  async function detail(id) {
    const box = document.getElementById("vm-detail");
    box.hidden = false;
    document.getElementById("vm-detail-title").textContent = `Instance ${id}`;
    const img = document.getElementById("vm-plot");
    img.src = `/api/vms/${id}/plot.png?t=${Date.now()}`;
    try {
      const h = await getJSON(`/api/vms/${id}/history`);
      fillTable(document.getElementById("vm-history"), h.columns, h.records);
    } catch (e) { setStatus(e.message, true); }
  }

  async function stop(force) {
    const ids = Array.from(state.checked);
    if (!ids.length) { setStatus("select instances first", true); return; }
    if (!confirm(`Stop${force ? " --force (halt now)" : " (drain, then halt)"} instance(s) ${ids.join(", ")}?`)) return;
    try {
      const out = await postJSON("/api/vms/stop", {ids, force});
      document.getElementById("vm-results").replaceChildren(...out.results.map(r =>
        el("li", {className: r.ok ? "ok" : "failed"}, `instance ${r.id}: ${r.message}`)));
      state.checked.clear(); load();
    } catch (e) { setStatus(e.message, true); }
  }

  async function pods() {
    try {
      const p = await getJSON("/api/pods");
      fillTable(document.getElementById("pods-table"), ["Pod", "VO", "Image", "Policy", "Waiting", "Booting", "Running",
        "Stopping", "Stalled", "MaxInstances", "MaxBootsPerCycle", "Reason"], p.pods,
        (k, v) => k === "Reason" && !v ? "-" : null);
      fillTable(document.getElementById("endpoints-table"), ["Endpoint", "Type", "Priority", "VMs", "MaxInstances", "Pods",
        "Failures", "BackedOffUntil", "LastError"], p.endpoints,
        (k, v, row) => k === "Pods" ? v.join(", ") : (k === "LastError" && !row.Failures) || (k === "BackedOffUntil" && !v) ? "-" : null);
    } catch (e) { setStatus(`pods: ${e.message}`, true); }
  }

  document.getElementById("vm-refresh").addEventListener("click", () => { state.start = 0; load(); pods(); });
  document.getElementById("vm-status").addEventListener("change", () => { state.start = 0; load(); });
  document.getElementById("vm-prev").addEventListener("click", () => { state.start = Math.max(0, state.start - state.limit); load(); });
  document.getElementById("vm-next").addEventListener("click", () => {
    if (state.start + state.limit < state.total) { state.start += state.limit; load(); } });
  if (mayStop) {
    document.getElementById("vm-stop").addEventListener("click", () => stop(false));
    document.getElementById("vm-stop-force").addEventListener("click", () => stop(true));
  }
  setInterval(() => { if (!document.hidden) { load(); pods(); } }, 20000);
  load(); pods();
})();
