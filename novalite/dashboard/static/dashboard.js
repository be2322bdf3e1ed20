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
    for (const form of document.querySelectorAll("#actions form[data-action]")) {
      form.hidden = !state.actions.includes(form.dataset.action);
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

const CSRF_FIELD = "csrf_token";
const CSRF_HEADER = "X-CSRF-Token";

async function postForm(url, fields) {
  const resp = await fetch(url, { method: "POST", credentials: "same-origin", body: new URLSearchParams(fields) });
  return { ok: resp.ok, body: await resp.json() };
}

// Images: the record is made through the dashboard (which holds the token), then the file's bytes
// are PUT to the dashboard, which streams them to the image API; the bar follows the upload.
function imageUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("image-file").files[0];
    const created = await postForm(form.action, new FormData(form));
    if (!created.ok) {
      status.textContent = created.body.error;
      return;
    }
    bar.hidden = false;
    bar.value = 0;
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", created.body.upload_url);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader(CSRF_HEADER, form.elements[CSRF_FIELD].value);
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      bar.value = Math.round((100 * e.loaded) / e.total);
      status.textContent = `${bar.value}% of ${file.size} bytes`;
    });
    xhr.addEventListener("load", () => {
      const answer = JSON.parse(xhr.responseText || "{}");
      status.textContent = xhr.status < 300 ? "Uploaded." : answer.error || `Upload failed (${xhr.status}).`;
      status.dataset.done = xhr.status < 300 ? "ok" : "error";
    });
    xhr.addEventListener("error", () => {
      status.textContent = "The upload was cut off.";
      status.dataset.done = "error";
    });
    xhr.send(file);
  });
}

// A created key pair: its private key, only on this page, saved as a file from the page itself.
function keyDownload() {
  const button = document.getElementById("download-key");
  if (!button) return;
  button.addEventListener("click", () => {
    const blob = new Blob([document.getElementById("private-key").textContent], { type: "application/x-pem-file" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = button.dataset.filename;
    document.body.appendChild(link);
    link.click();
    link.remove();
    URL.revokeObjectURL(link.href);
  });
}

// xterm.js writes some of its rules into <style> elements it makes at run time, which the CSP
// (no inline styles) blocks. This page hands it inert <template> elements instead, whose text
// becomes a constructed stylesheet (CSSOM, which the CSP does not govern); the vendored file stays
// unchanged.
function constructedStyles() {
  const create = document.createElement.bind(document);
  document.createElement = (tag, options) => {
    if (String(tag).toLowerCase() !== "style") return create(tag, options);
    const holder = create("template");
    const sheet = new CSSStyleSheet();
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    const setText = { get: () => "", set: (text) => sheet.replaceSync(String(text)) };
    Object.defineProperties(holder, { textContent: setText, innerText: setText, sheet: { get: () => sheet } });
    holder.remove = () => {
      document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
      Element.prototype.remove.call(holder);
    };
    return holder;
  };
}

// The instance page's serial console: a fresh console URL from the API (asked by the dashboard as
// the user), then xterm.js over that websocket; bytes both ways.
function serialConsole() {
  const button = document.getElementById("console-connect");
  if (!button || !window.Terminal) return;
  const status = document.getElementById("console-status");
  constructedStyles();
  button.addEventListener("click", async () => {
    const answer = await postForm(button.dataset.url, { [CSRF_FIELD]: button.dataset.csrf });
    if (!answer.ok) {
      status.textContent = answer.body.error;
      return;
    }
    button.disabled = true;
    const term = new window.Terminal();
    term.open(document.getElementById("terminal"));
    term.element.scrollIntoView({ block: "nearest" }); // xterm draws nothing while out of view
    const ws = new WebSocket(answer.body.url, ["binary"]);
    ws.binaryType = "arraybuffer";
    ws.addEventListener("open", () => {
      status.textContent = "Connected.";
      term.focus();
    });
    ws.addEventListener("message", (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data)));
    ws.addEventListener("close", () => {
      status.textContent = "Disconnected.";
      button.disabled = false;
      term.dispose();
    });
    const encoder = new TextEncoder();
    term.onData((data) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  confirmForms();
  liveInstances();
  liveInstance();
  imageUpload();
  keyDownload();
  serialConsole();
});
