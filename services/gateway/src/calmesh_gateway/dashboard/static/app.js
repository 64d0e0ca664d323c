// CalMesh dashboard: the one script of every page (an ES module, served by CalMesh, no framework).
// Pages are rendered on the server; this script sends every change straight to the public API
// (/api/v1/...) with the session's CSRF token, shows a problem's `errors` beside the fields they
// name, and then refreshes the parts of the page marked data-region.

const CSRF_COOKIE = "calmesh_csrf";

function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === CSRF_COOKIE) return decodeURIComponent(rest.join("="));
  }
  return "";
}

async function callApi(method, url, body) {
  const headers = { Accept: "application/json" };
  const token = csrfToken();
  if (token) headers["X-CSRF-Token"] = token;
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    return { ok: false, status: 0, data: { detail: "CalMesh could not be reached. Check your connection and try again." } };
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  return { ok: response.ok, status: response.status, data };
}

// A form's fields as the API's JSON body: data-kind="list" checkboxes collect into an array
// (data-json values are parsed), data-kind="int" becomes a number, empty optional fields are left out.
function formBody(form) {
  const body = {};
  for (const el of form.elements) {
    if (!el.name || el.disabled || el.type === "submit" || el.type === "button") continue;
    const kind = el.dataset.kind || "";
    if (el.type === "checkbox") {
      if (kind === "list") {
        body[el.name] = body[el.name] || [];
        if (el.checked) body[el.name].push("json" in el.dataset ? JSON.parse(el.value) : el.value);
      } else {
        body[el.name] = el.checked;
      }
      continue;
    }
    const value = el.value;
    if (value === "" && !el.required) continue;
    if (kind === "int") body[el.name] = Number(value);
    else if (kind === "instant") body[el.name] = value ? toInstant(value) : value;
    else body[el.name] = value;
  }
  for (const box of form.querySelectorAll("[data-build]")) body[box.dataset.build] = BUILDERS[box.dataset.build](box);
  return body;
}

// A datetime-local value (the browser's zone) as an RFC 3339 instant in UTC.
function toInstant(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

// Fields whose JSON is not one value per input: the weekly hours, the date overrides, a poll's options.
const BUILDERS = {
  weekly_hours(box) {
    const hours = {};
    for (const row of box.querySelectorAll("[data-day]")) {
      const [on, from, until] = row.querySelectorAll("input");
      hours[row.dataset.day] = on.checked && from.value && until.value ? [[from.value, until.value]] : [];
    }
    return hours;
  },
  date_overrides(box) {
    const overrides = [];
    for (const row of box.querySelectorAll("[data-override]")) {
      const [day, from, until] = row.querySelectorAll("input");
      if (!day.value) continue;
      overrides.push({ date: day.value, hours: from.value && until.value ? [[from.value, until.value]] : [] });
    }
    return overrides;
  },
  options(box) {
    const options = [];
    for (const input of box.querySelectorAll("[data-option] input")) {
      if (input.value) options.push({ start: toInstant(input.value) });
    }
    return options;
  },
};

function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) el.remove();
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    const described = (el.getAttribute("aria-describedby") || "").split(" ").filter((id) => !id.startsWith("err-"));
    if (described.length) el.setAttribute("aria-describedby", described.join(" "));
    else el.removeAttribute("aria-describedby");
  }
  const alert = form.querySelector(".form-alert");
  if (alert) { alert.textContent = ""; alert.hidden = true; }
}

// The problem's `errors` beside the fields they name ("sources[0].calendar_id" names "sources");
// what names no field of this form goes to the form's alert.
function showProblem(form, result) {
  const problem = result.data || {};
  const unplaced = [];
  let first = null;
  for (const error of problem.errors || []) {
    const field = String(error.field || "").replace(/^(body|\$)\.?/, "");
    const name = field.split(/[.[]/)[0];
    const box = name && (form.querySelector(`[data-field="${CSS.escape(field)}"]`) || form.querySelector(`[data-field="${CSS.escape(name)}"]`));
    if (!box) { unplaced.push(field ? `${field}: ${error.message}` : error.message); continue; }
    const control = box.matches("input, select, textarea") ? box : box.querySelector("input, select, textarea");
    const message = document.createElement("p");
    message.className = "field-error";
    message.id = `err-${form.id}-${name}-${box.querySelectorAll(".field-error").length}`;
    message.textContent = error.message;
    box.append(message);
    if (control) {
      control.setAttribute("aria-invalid", "true");
      const described = control.getAttribute("aria-describedby");
      control.setAttribute("aria-describedby", described ? `${described} ${message.id}` : message.id);
      first = first || control;
    }
  }
  if (!first || unplaced.length) {
    const alert = form.querySelector(".form-alert") || document.getElementById("page-alert");
    alert.textContent = first ? unplaced.join("; ") : (problem.detail || `The request failed (${result.status}).`);
    alert.hidden = false;
  }
  (first || form.querySelector("input, select, button")).focus();
}

function pageAlert(text, ok = false) {
  const alert = document.getElementById("page-alert");
  alert.textContent = text;
  alert.classList.toggle("ok", ok);
  alert.hidden = false;
}

// Fetch this page again and swap in its data-region parts (lists), keeping everything else.
async function refreshRegions() {
  const response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (response.redirected || !response.ok) { location.reload(); return; }
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const region of document.querySelectorAll("[data-region]")) {
    const replacement = fresh.getElementById(region.id);
    if (replacement) { region.replaceWith(replacement); labelCells(replacement); }
  }
}

// At a phone's width a table's rows become cards (app.css) and its header row is hidden: each cell
// is labelled with its column's header (not the visually hidden "Actions").
function labelCells(root) {
  for (const table of root.querySelectorAll("table")) {
    const heads = [...table.querySelectorAll("thead th")].map((th) => (th.querySelector(".sr") ? "" : th.textContent.trim()));
    for (const row of table.querySelectorAll("tbody tr")) {
      [...row.children].forEach((cell, i) => { if (heads[i]) cell.dataset.label = heads[i]; });
    }
  }
}
labelCells(document);

async function afterSuccess(el, result) {
  if (el.dataset.follow && result.data && result.data[el.dataset.follow]) {
    location.assign(result.data[el.dataset.follow]);
    return;
  }
  if (el.dataset.redirect) { location.assign(el.dataset.redirect); return; }
  if (el.dataset.reveal) {
    const box = document.getElementById(el.dataset.revealBox);
    box.querySelector("output").textContent = result.data[el.dataset.reveal];
    box.hidden = false;
  }
  if (el.dataset.done) pageAlert(el.dataset.done, true);
  if (el.tagName === "FORM") el.reset();
  await refreshRegions();
  if (el.dataset.reveal) document.getElementById(el.dataset.revealBox).querySelector("button").focus();
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.dataset.api) return;
  event.preventDefault();
  clearErrors(form);
  const submit = form.querySelector('[type="submit"]');
  if (submit) submit.disabled = true;
  try {
    const result = await callApi(form.dataset.method || "POST", form.dataset.api, formBody(form));
    if (result.ok) await afterSuccess(form, result);
    else showProblem(form, result);
  } finally {
    if (submit) submit.disabled = false;
  }
});

document.addEventListener("click", async (event) => {
  const el = event.target.closest("button");
  if (!el) return;
  if (el.dataset.copy !== undefined) {
    const text = document.getElementById(el.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); el.textContent = "Copied"; } catch { el.textContent = "Select and copy it"; }
    return;
  }
  if (el.dataset.toggle) {
    const target = document.getElementById(el.dataset.toggle);
    target.hidden = !target.hidden;
    el.setAttribute("aria-expanded", String(!target.hidden));
    if (!target.hidden) target.querySelector("input, select")?.focus();
    return;
  }
  if (el.dataset.close) { document.getElementById(el.dataset.close).hidden = true; return; }
  if ("event" in el.dataset) { showEvent(el); return; }
  if (!el.dataset.api || el.form) return;
  if (el.dataset.confirm && !window.confirm(el.dataset.confirm)) return;
  el.disabled = true;
  try {
    const body = el.dataset.body ? JSON.parse(el.dataset.body.replaceAll("{origin}", location.origin)) : undefined;
    const result = await callApi(el.dataset.method || "POST", el.dataset.api, body);
    if (result.ok) await afterSuccess(el, result);
    else if (result.status === 401) location.assign("/app/login");
    else pageAlert((result.data && result.data.detail) || `The request failed (${result.status}).`);
  } finally {
    if (el.isConnected) el.disabled = false;
  }
});

function showEvent(button) {
  const panel = document.getElementById("event-detail");
  for (const key of ["title", "when", "source", "location", "status", "description"]) {
    document.getElementById(`detail-${key}`).textContent = button.dataset[key] || "—";
  }
  document.getElementById("detail-conflict").hidden = !("conflict" in button.dataset);
  panel.hidden = false;
  panel.querySelector("button").focus();
}

// A new account's time zone: the browser's own, when the list has it.
for (const select of document.querySelectorAll("select[data-default-tz]")) {
  if (select.closest("#signup")) {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && [...select.options].some((o) => o.value === zone)) select.value = zone;
  }
}
