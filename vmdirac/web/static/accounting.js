// Accounting: report, grouping and span; the PNG plot and the numbers behind it.
"use strict";

(() => {
  const {getJSON, el, fillTable, setStatus, show} = Portal;
  const report = document.getElementById("acc-report"), grouping = document.getElementById("acc-grouping");
  let reports = [];

  function groupings() {
    const r = reports.find(x => x.name === report.value);
    grouping.replaceChildren(...(r ? r.groupings : []).map(g => el("option", {value: g}, g)));
  }

  async function showReport() {
    const q = new URLSearchParams({name: report.value, grouping: grouping.value,
                                   span: document.getElementById("acc-span").value});
    const img = document.getElementById("acc-plot");
    img.hidden = false;
    img.src = `/api/accounting/plot.png?${q}`;
    try {
      const r = await getJSON(`/api/accounting/report?${q}`);
      const groups = Object.keys(r.series);
      const rows = r.times.map((t, i) => {
        const row = {"Time (UTC)": new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ")};
        for (const g of groups) row[g] = show(r.series[g][i]);
        return row;
      });
      fillTable(document.getElementById("acc-table"), ["Time (UTC)", ...groups], rows);
      setStatus(`${r.title} (${r.unit}), by ${r.grouping}, ${r.bucket_seconds} s buckets`);
    } catch (e) { setStatus(e.message, true); }
  }

  report.addEventListener("change", groupings);
  document.getElementById("acc-form").addEventListener("submit", ev => { ev.preventDefault(); showReport(); });
  (async () => {
    try {
      reports = await getJSON("/api/accounting/reports");
      report.replaceChildren(...reports.map(r => el("option", {value: r.name}, r.title || r.name)));
      groupings();
      if (reports.length) showReport();
    } catch (e) { setStatus(`reports: ${e.message}`, true); }
  })();
})();
