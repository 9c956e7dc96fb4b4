// What every page shares: JSON calls carrying the CSRF token, safe DOM building (textContent
// only, never innerHTML with data), tables, a dialog, and the status line.
"use strict";

const Portal = (() => {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

  async function answer(resp) {
    let body = null;
    try { body = await resp.json(); } catch (e) { /* not JSON */ }
    if (!resp.ok || !body || body.OK === false) {
      throw new Error((body && body.Message) || `HTTP ${resp.status}`);
    }
    return body.Value;
  }

  async function getJSON(url) {
    return answer(await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}}));
  }

  async function postJSON(url, data) {
    return answer(await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
      body: JSON.stringify(data)}));
  }

  async function postForm(url, formData) {
    return answer(await fetch(url, {method: "POST", credentials: "same-origin",
                                    headers: {"X-CSRF-Token": csrf()}, body: formData}));
  }

  // el("td", {className: "x", dataset: {id: 3}}, "text", childNode)
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function show(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(2);
    return String(value);
  }

  // Fill a <table> from column names and rows (arrays or objects); cell(col, value, row) may
  // return a Node for special cells.
  function fillTable(table, columns, rows, cell, onHeader) {
    const head = table.tHead, body = table.tBodies[0];
    head.replaceChildren(el("tr", {}, ...columns.map(c => {
      const th = el("th", {dataset: {col: c.key || c}}, c.label !== undefined ? c.label : c);
      if (onHeader) th.addEventListener("click", () => onHeader(c.key || c));
      return th;
    })));
    body.replaceChildren(...rows.map(row => el("tr", {}, ...columns.map((c, i) => {
      const key = c.key || c;
      const value = Array.isArray(row) ? row[i] : row[key];
      const custom = cell ? cell(key, value, row) : null;
      return el("td", {dataset: {col: key}}, custom !== null && custom !== undefined ? custom : show(value));
    }))));
  }

  function setStatus(text, error) {
    const node = document.getElementById("status");
    node.textContent = text || "";
    node.className = error ? "error" : (text ? "info" : "");
  }

  function dialog(title, ...content) {
    const d = document.getElementById("dialog");
    document.getElementById("dialog-title").textContent = title;
    document.getElementById("dialog-body").replaceChildren(...content);
    if (!d.open) d.showModal();
  }

  function selected(select) {
    return Array.from(select.selectedOptions).map(o => o.value);
  }

  function fillOptions(select, values) {
    const keep = new Set(selected(select));
    select.replaceChildren(...values.map(v => el("option", {value: v, selected: keep.has(v)}, v)));
  }

  document.addEventListener("DOMContentLoaded", () => {
    const group = document.getElementById("group-select");
    if (group) group.addEventListener("change", async () => {
      try { await postJSON("/api/group", {group: group.value}); location.reload(); }
      catch (e) { setStatus(e.message, true); }
    });
  });

  return {getJSON, postJSON, postForm, el, show, fillTable, setStatus, dialog, selected, fillOptions};
})();
