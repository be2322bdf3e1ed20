// novalite dashboard: confirmations and live updates. No inline scripts (the CSP forbids them);
// data comes from data-* attributes and JSON endpoints, and reaches the DOM only as textContent.
"use strict";

const FAST_MS = 1000; // while something is building or changing
const SLOW_MS = 5000;

function confirmForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

async function getJSON(url) {
  const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!resp.ok || !resp.headers.get("content-type").includes("json")) throw new Error(String(resp.status));
  return resp.json();
}

function poll(url, apply) {
  const tick = async () => {
    let busy = false;
    try {
      busy = apply(await getJSON(url));
    } catch (err) {
      return; // logged out or gone: stop polling (the next navigation shows why)
    }
    window.setTimeout(tick, busy ? FAST_MS : SLOW_MS);
  };
  window.setTimeout(tick, FAST_MS);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function instanceRow(r, detailUrl, admin) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.id;
  const link = document.createElement("a");
  link.href = detailUrl + encodeURIComponent(r.id);
  link.textContent = r.name;
  const name = document.createElement("td");
  name.appendChild(link);
  const status = cell(r.status);
  status.className = "status";
  status.dataset.status = r.status;
  tr.append(name, status, cell(r.task_state), cell(r.power_state), cell(r.addresses), cell(r.flavor), cell(r.image));
  if (admin) tr.append(cell(r.host));
  tr.append(cell(r.age));
  return tr;
}

function liveInstances() {
  const table = document.getElementById("instances");
  if (!table) return;
  const admin = table.dataset.admin === "true";
  poll(table.dataset.pollUrl, (page) => {
    const body = document.createElement("tbody");
    for (const r of page.rows) body.appendChild(instanceRow(r, table.dataset.detailUrl, admin));
    table.tBodies[0].replaceWith(body);
    return page.rows.some((r) => r.busy);
  });
}

function liveInstance() {
  const overview = document.getElementById("overview");
  if (!overview) return;
  poll(overview.dataset.pollUrl, (state) => {
    if (state.gone) {
      window.location.assign(overview.dataset.goneUrl);
      return false;
    }
    for (const dd of overview.querySelectorAll("[data-field]")) {
      const value = state.row[dd.dataset.field];
      dd.textContent = typeof value === "boolean" ? (value ? "yes" : "no") : value;
    }
    return state.row.busy;
  });
  const consoleLog = document.getElementById("console-log");
  if (consoleLog) {
    poll(consoleLog.dataset.pollUrl, (data) => {
      consoleLog.textContent = data.output;
      return false;
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  confirmForms();
  liveInstances();
  liveInstance();
});
