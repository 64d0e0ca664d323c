"""The public booking page, the cancel page a mailed link opens, and /embed.js.

Server-rendered HTML with a little inline CSS and JavaScript, no framework: the page is one request,
then it calls the public JSON endpoints on the same origin (the gateway). It is usable by keyboard
(native buttons and form controls, visible focus, focus moved to each next step), announces results
in an ``aria-live`` region, detects the visitor's timezone with ``Intl.DateTimeFormat`` and lets them
change it, and fits a phone. Embedded (``?embed=1``) it drops its outer margins and posts its height
to the parent so the iframe can fit it.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
DEFAULT_COLOR = "#2563eb"


def safe_color(value: str | None) -> str:
    """Only a #rgb or #rrggbb colour reaches CSS."""
    return value if value and _COLOR.match(value) else DEFAULT_COLOR


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CSS = """
:root{--accent:%(color)s;--fg:#111827;--muted:#4b5563;--line:#d1d5db;--bg:#fff;--soft:#f3f4f6;--err:#b91c1c}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%%}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--soft)}
body.embed{background:transparent}
main{max-width:46rem;margin:1.5rem auto;padding:1.25rem;background:var(--bg);border:1px solid var(--line);border-radius:12px}
body.embed main{margin:0;border:0;border-radius:0;max-width:none}
h1{font-size:1.5rem;margin:0 0 .25rem}
h2{font-size:1.1rem;margin:1.25rem 0 .5rem}
p{margin:.25rem 0}
.muted{color:var(--muted)}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem;z-index:9}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
select,input,textarea{font:inherit;width:100%%;padding:.55rem .65rem;border:1px solid #6b7280;border-radius:8px;background:#fff;color:inherit}
textarea{min-height:5rem;resize:vertical}
button{font:inherit;cursor:pointer;border-radius:8px;border:1px solid var(--line);background:#fff;color:var(--fg);padding:.5rem .75rem;min-height:44px}
button:focus-visible,a:focus-visible,select:focus-visible,input:focus-visible,textarea:focus-visible,[tabindex]:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
button[disabled]{cursor:not-allowed;opacity:.45}
.primary{background:var(--accent);border-color:var(--accent);color:#fff;font-weight:600}
.nav{display:flex;align-items:center;justify-content:space-between;gap:.5rem}
.days{list-style:none;padding:0;margin:.5rem 0;display:grid;grid-template-columns:repeat(7,minmax(0,1fr));gap:.35rem}
.days button{width:100%%;display:flex;flex-direction:column;align-items:center;padding:.4rem .1rem;line-height:1.2}
.days button small{font-size:.7rem;color:var(--muted)}
.days button[aria-pressed=true]{border-color:var(--accent);box-shadow:inset 0 0 0 2px var(--accent)}
.slots{list-style:none;padding:0;margin:.5rem 0;display:grid;grid-template-columns:repeat(auto-fill,minmax(6.5rem,1fr));gap:.4rem}
.slots button{width:100%%;border-color:var(--accent);color:var(--accent);font-weight:600}
.actions{display:flex;gap:.5rem;flex-wrap:wrap;margin-top:1rem}
.field-error{color:var(--err);font-size:.9rem;margin:.2rem 0 0}
#status{min-height:1.5rem;margin-top:.75rem}
#status.error{color:var(--err)}
.done{border-left:4px solid var(--accent);padding-left:.75rem}
.sr-only{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
@media (max-width:30rem){main{margin:0;border-radius:0;border-left:0;border-right:0;padding:1rem}.days{grid-template-columns:repeat(4,minmax(0,1fr))}}
@media (prefers-reduced-motion:no-preference){button{transition:background .15s}}
"""

_PAGE_JS = r"""
(function(){
"use strict";
var cfg = JSON.parse(document.getElementById("calmesh-config").textContent);
var $ = function(id){ return document.getElementById(id); };
var detected = "UTC";
try { detected = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) {}
var state = {tz: detected, from: null, days: {}, day: null, slot: null, busy: false};
var status = $("status");
function say(text, isError){ status.textContent = text; status.className = isError ? "error" : ""; }

function ymd(date, tz){
  var p = new Intl.DateTimeFormat("en-CA", {timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit"}).formatToParts(date);
  var o = {}; p.forEach(function(x){ o[x.type] = x.value; });
  return o.year + "-" + o.month + "-" + o.day;
}
function addDays(day, n){
  var d = new Date(day + "T12:00:00Z"); d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}
function timeLabel(iso){
  return new Intl.DateTimeFormat(undefined, {timeZone: state.tz, hour: "numeric", minute: "2-digit"}).format(new Date(iso));
}
function dayLabel(day, opts){
  return new Intl.DateTimeFormat(undefined, Object.assign({timeZone: "UTC"}, opts)).format(new Date(day + "T12:00:00Z"));
}
function longLabel(iso){
  return new Intl.DateTimeFormat(undefined, {timeZone: state.tz, weekday: "long", day: "numeric", month: "long",
    year: "numeric", hour: "numeric", minute: "2-digit", timeZoneName: "short"}).format(new Date(iso));
}
function show(id, on){ $(id).hidden = !on; }

// Timezone picker: every zone the browser knows, the detected one selected.
var tzSelect = $("tz");
var zones = [];
try { zones = Intl.supportedValuesOf("timeZone"); } catch (e) {}
[detected, cfg.timezone, "UTC"].forEach(function(z){ if (zones.indexOf(z) < 0) zones.unshift(z); });
zones.forEach(function(z){ var o = document.createElement("option"); o.value = z; o.textContent = z.replace(/_/g, " "); tzSelect.appendChild(o); });
tzSelect.value = detected;
tzSelect.addEventListener("change", function(){ state.tz = tzSelect.value; state.day = null; load(state.from); });

function api(path, options){
  return fetch(path, options).then(function(r){
    return r.text().then(function(t){ var body = null; try { body = t ? JSON.parse(t) : null; } catch (e) {} return {status: r.status, body: body}; });
  });
}

function load(from){
  state.from = from;
  var to = addDays(from, 6);
  $("range").textContent = dayLabel(from, {day: "numeric", month: "short"}) + " – " + dayLabel(to, {day: "numeric", month: "short", year: "numeric"});
  $("prev").disabled = from <= ymd(new Date(), state.tz);
  say("Loading times…");
  var q = "?handle=" + encodeURIComponent(cfg.handle) + "&start=" + from + "&end=" + to + "&tz=" + encodeURIComponent(state.tz);
  return api("/api/v1/booking-pages/" + encodeURIComponent(cfg.slug) + "/slots" + q).then(function(res){
    if (res.status !== 200) { say((res.body && res.body.detail) || "Could not load the times; try again.", true); return; }
    state.days = {};
    res.body.slots.forEach(function(s){ var d = ymd(new Date(s.start), state.tz); (state.days[d] = state.days[d] || []).push(s); });
    renderDays(from);
    var total = res.body.slots.length;
    say(total ? total + " times available this week." : "No times available this week; try the next.");
    if (state.day && state.days[state.day]) renderSlots(state.day); else { show("step-slot", false); }
  }, function(){ say("Could not reach the server; check your connection.", true); });
}

function renderDays(from){
  var list = $("days"); list.textContent = "";
  for (var i = 0; i < 7; i++) {
    var day = addDays(from, i), n = (state.days[day] || []).length;
    var li = document.createElement("li"), b = document.createElement("button");
    b.type = "button"; b.dataset.date = day; b.disabled = n === 0;
    b.setAttribute("aria-pressed", String(day === state.day));
    b.setAttribute("aria-label", dayLabel(day, {weekday: "long", day: "numeric", month: "long"}) + ", " + (n ? n + (n === 1 ? " time" : " times") : "no times"));
    b.innerHTML = "<span></span><strong></strong><small></small>";
    b.children[0].textContent = dayLabel(day, {weekday: "short"});
    b.children[1].textContent = dayLabel(day, {day: "numeric"});
    b.children[2].textContent = n ? n + (n === 1 ? " time" : " times") : "—";
    b.addEventListener("click", pickDay);
    li.appendChild(b); list.appendChild(li);
  }
}

function pickDay(ev){
  state.day = ev.currentTarget.dataset.date;
  Array.prototype.forEach.call($("days").querySelectorAll("button"), function(b){ b.setAttribute("aria-pressed", String(b.dataset.date === state.day)); });
  renderSlots(state.day);
  $("slot-heading").focus();
}

function renderSlots(day){
  var list = $("slots"); list.textContent = "";
  $("slot-heading").textContent = "Pick a time on " + dayLabel(day, {weekday: "long", day: "numeric", month: "long"});
  (state.days[day] || []).forEach(function(s){
    var li = document.createElement("li"), b = document.createElement("button");
    b.type = "button"; b.textContent = timeLabel(s.start); b.dataset.start = s.start;
    b.setAttribute("aria-label", longLabel(s.start));
    b.addEventListener("click", function(){ pickSlot(s); });
    li.appendChild(b); list.appendChild(li);
  });
  show("step-slot", true); show("step-form", false);
}

function pickSlot(s){
  state.slot = s; state.key = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random();
  $("chosen").textContent = longLabel(s.start);
  show("step-form", true);
  $("name").focus();
}

function fieldError(id, text){
  var el = $(id + "-error"); el.textContent = text || ""; el.hidden = !text;
  $(id).setAttribute("aria-invalid", text ? "true" : "false");
}

$("back").addEventListener("click", function(){ show("step-form", false); $("slot-heading").focus(); });
$("prev").addEventListener("click", function(){ load(addDays(state.from, -7)); });
$("next").addEventListener("click", function(){ load(addDays(state.from, 7)); });

$("book-form").addEventListener("submit", function(ev){
  ev.preventDefault();
  if (state.busy || !state.slot) return;
  var name = $("name").value.trim(), email = $("email").value.trim(), notes = $("notes").value.trim();
  fieldError("name", name ? "" : "Please enter your name.");
  fieldError("email", /^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(email) ? "" : "Please enter a valid email address.");
  if (!name) { $("name").focus(); return; }
  if (!/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(email)) { $("email").focus(); return; }
  var asked = window.calmeshQuestions ? window.calmeshQuestions.collect() : null;
  if (asked && asked.invalid) { asked.invalid.focus(); return; }
  state.busy = true; $("book-btn").disabled = true; say("Booking…");
  var body = {start: state.slot.start, name: name, email: email, timezone: state.tz};
  if (notes) body.notes = notes;
  if (asked) body.answers = asked.answers;
  api("/api/v1/booking-pages/" + encodeURIComponent(cfg.slug) + "/book?handle=" + encodeURIComponent(cfg.handle), {
    method: "POST", headers: {"Content-Type": "application/json", "Idempotency-Key": state.key}, body: JSON.stringify(body)
  }).then(function(res){
    state.busy = false; $("book-btn").disabled = false;
    if (res.status === 201 && res.body.status === "pending_verification") {
      // The page requires e-mail verification: nothing is booked until the mailed link is used.
      $("done-heading").textContent = "Check your email";
      $("done-when").textContent = longLabel(res.body.start);
      $("done-verify-email").textContent = email;
      show("done-sent", false); show("done-cancel", false); show("done-verify", true);
      show("step-day", false); show("step-slot", false); show("step-form", false); show("tz-section", false);
      show("step-done", true);
      say("Held: " + longLabel(res.body.start) + ". Confirm it with the link sent to " + email + ".");
      $("done-heading").focus();
    } else if (res.status === 201) {
      $("done-when").textContent = longLabel(res.body.start);
      $("done-email").textContent = email;
      var signed = new URL(res.body.cancel_url, location.href).searchParams;
      $("cancel-link").href = location.pathname + "?booking=" + encodeURIComponent(res.body.id) + "&exp=" +
        encodeURIComponent(signed.get("exp")) + "&sig=" + encodeURIComponent(signed.get("sig"));
      $("cancel-link").setAttribute("data-cancel-url", res.body.cancel_url);
      show("step-day", false); show("step-slot", false); show("step-form", false); show("tz-section", false);
      show("step-done", true);
      say("Booked: " + longLabel(res.body.start) + ".");
      $("done-heading").focus();
    } else if (res.status === 409) {
      say("Sorry, that time was just taken. Please pick another.", true);
      show("step-form", false); load(state.from);
    } else if (res.status === 422 && res.body && res.body.errors) {
      res.body.errors.forEach(function(e){ if (e.field === "name" || e.field === "email") fieldError(e.field, e.message); });
      var marked = window.calmeshQuestions && window.calmeshQuestions.showErrors(res.body.errors);
      say(marked ? "Please check the answers marked above." : (res.body && res.body.detail) || "Please check the form.", true);
    } else {
      say((res.body && res.body.detail) || "Something went wrong; please try again.", true);
    }
  }, function(){ state.busy = false; $("book-btn").disabled = false; say("Could not reach the server; please try again.", true); });
});

// Embedded: tell the host page how tall we are.
if (window.parent !== window) {
  var last = 0;
  var post = function(){
    var h = Math.ceil(document.documentElement.getBoundingClientRect().height);
    if (h !== last) { last = h; window.parent.postMessage({type: "calmesh:resize", height: h, slug: cfg.slug, handle: cfg.handle}, "*"); }
  };
  if (window.ResizeObserver) new ResizeObserver(post).observe(document.documentElement);
  window.addEventListener("load", post); post();
  // In a popup, Escape inside the frame closes it too (the host page never sees keys typed here).
  document.addEventListener("keydown", function(e){
    if (e.key === "Escape") window.parent.postMessage({type: "calmesh:close", slug: cfg.slug, handle: cfg.handle}, "*");
  });
}

load(ymd(new Date(), state.tz));
})();
"""


def booking_page_html(page: dict[str, Any], *, owner_name: str, embed: bool, color: str | None) -> str:
    """The booking page of `page` (a stored page row as a dict)."""
    esc = html.escape
    cfg = {"handle": page["handle"], "slug": page["slug"], "timezone": page["timezone"]}
    title = esc(page["title"])
    description = f'<p class="muted">{esc(page["description"])}</p>' if page.get("description") else ""
    questions = page.get("questions") or []
    if isinstance(questions, str | bytes):
        questions = json.loads(questions)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {esc(owner_name)} · CalMesh</title>
<meta name="description" content="Book {title} with {esc(owner_name)}">
<style>{_CSS % {"color": safe_color(color)}}{_QUESTIONS_CSS}</style>
</head>
<body class="{'embed' if embed else ''}">
<a class="skip" href="#main">Skip to booking</a>
<main id="main" aria-labelledby="page-title">
<header>
<h1 id="page-title">{title}</h1>
<p class="muted">{int(page["duration_minutes"])} minutes · with {esc(owner_name)}</p>
{description}
</header>
<section id="tz-section" aria-label="Time zone">
<label for="tz">Your time zone</label>
<select id="tz" name="tz"></select>
</section>
<section id="step-day" aria-labelledby="day-heading">
<h2 id="day-heading">Pick a day</h2>
<div class="nav">
<button type="button" id="prev" aria-label="Previous week">&#8249; Earlier</button>
<span id="range" aria-live="off"></span>
<button type="button" id="next" aria-label="Next week">Later &#8250;</button>
</div>
<ul id="days" class="days"></ul>
</section>
<section id="step-slot" aria-labelledby="slot-heading" hidden>
<h2 id="slot-heading" tabindex="-1">Pick a time</h2>
<ul id="slots" class="slots"></ul>
</section>
<section id="step-form" aria-labelledby="form-heading" hidden>
<h2 id="form-heading">Your details</h2>
<p>Time: <strong id="chosen"></strong></p>
<form id="book-form" novalidate>
<label for="name">Name</label>
<input id="name" name="name" autocomplete="name" required aria-describedby="name-error">
<p id="name-error" class="field-error" hidden></p>
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="email" required aria-describedby="email-error">
<p id="email-error" class="field-error" hidden></p>
{questions_html(questions)}
<label for="notes">Notes <span class="muted">(optional)</span></label>
<textarea id="notes" name="notes" maxlength="5000"></textarea>
<div class="actions">
<button type="submit" id="book-btn" class="primary">Confirm booking</button>
<button type="button" id="back">Back</button>
</div>
</form>
</section>
<section id="step-done" class="done" aria-labelledby="done-heading" hidden>
<h2 id="done-heading" tabindex="-1">You are booked</h2>
<p id="done-when"></p>
<p id="done-sent">A confirmation with a calendar invitation is on its way to <strong id="done-email"></strong>.</p>
<p id="done-verify" hidden>The time is held for you. To book it, open the link we sent to <strong id="done-verify-email"></strong> and confirm; an unused link expires and frees the time.</p>
<p id="done-cancel"><a id="cancel-link" href="#">Cancel this booking</a></p>
</section>
<div id="status" role="status" aria-live="polite" aria-atomic="true"></div>
</main>
<script id="calmesh-config" type="application/json">{_script_json(cfg)}</script>
{f"<script>{_QUESTIONS_JS}</script>" if questions else ""}
<script>{_PAGE_JS}</script>
</body>
</html>
"""


# --- questions: the page's own fields, between the visitor's email and notes -------------------------

_QUESTIONS_CSS = """
.check{display:flex;gap:.6rem;align-items:flex-start;margin:.75rem 0 .25rem}
.check input{width:auto;min-width:1.25rem;min-height:1.25rem;margin:.2rem 0 0;accent-color:var(--accent)}
.check label{margin:0}
"""

_INPUT_TYPES = {"text": "text", "email": "email", "phone": "tel"}
_AUTOCOMPLETE = {"email": "email", "phone": "tel"}
_MAXLENGTH = {"text": 1000, "textarea": 5000, "email": 254, "phone": 40}


def questions_html(questions: list[dict[str, Any]]) -> str:
    """The page's questions as labelled form fields: each with `for`/`id`, `required` when it is,
    a select's options, a checkbox beside its label, and a place for its error (filled from a 422's
    ``answers.<id>``). The element ids are ``q-<question id>``."""
    esc = html.escape
    out = []
    for q in questions:
        qid, qtype, required = str(q["id"]), str(q["type"]), bool(q.get("required"))
        fid = f"q-{qid}"
        common = (f'id="{esc(fid)}" name="{esc(qid)}"{" required" if required else ""}'
                  f' aria-describedby="{esc(fid)}-error" data-question="{esc(qid)}" data-type="{esc(qtype)}"')
        hint = "" if required else ' <span class="muted">(optional)</span>'
        label = f'<label for="{esc(fid)}">{esc(str(q["label"]))}{hint}</label>'
        if qtype == "checkbox":
            field = f'<div class="check"><input type="checkbox" {common}>{label}</div>'
        elif qtype == "select":
            options = "".join(f'<option value="{esc(o)}">{esc(o)}</option>' for o in q.get("options") or [])
            field = f'{label}\n<select {common}><option value="">Choose…</option>{options}</select>'
        elif qtype == "textarea":
            field = f'{label}\n<textarea {common} maxlength="{_MAXLENGTH["textarea"]}"></textarea>'
        else:
            auto = f' autocomplete="{_AUTOCOMPLETE[qtype]}"' if qtype in _AUTOCOMPLETE else ""
            field = (f'{label}\n<input type="{_INPUT_TYPES.get(qtype, "text")}" {common}'
                     f' maxlength="{_MAXLENGTH.get(qtype, 1000)}"{auto}>')
        out.append(f'{field}\n<p id="{esc(fid)}-error" class="field-error" hidden></p>')
    return f'<div id="questions">\n{chr(10).join(out)}\n</div>' if out else ""


#: Reads the question fields into `answers` (a checkbox as a boolean, an empty optional field left
#: out), checks what the browser can (required, email), and shows a 422's ``answers.<id>`` errors
#: beside their fields. The booking form's script calls it through `window.calmeshQuestions`.
_QUESTIONS_JS = r"""
(function(){
"use strict";
var fields = Array.prototype.slice.call(document.querySelectorAll("[data-question]"));
function mark(el, text){
  var err = document.getElementById(el.id + "-error");
  if (err) { err.textContent = text || ""; err.hidden = !text; }
  el.setAttribute("aria-invalid", text ? "true" : "false");
}
function collect(){
  var answers = {}, invalid = null;
  fields.forEach(function(el){
    var id = el.getAttribute("data-question"), type = el.getAttribute("data-type"), problem = "";
    if (type === "checkbox") {
      if (el.required && !el.checked) problem = "Please tick this box to continue.";
      answers[id] = el.checked;
    } else {
      var v = el.value.trim();
      if (!v) { if (el.required) problem = type === "select" ? "Please choose an option." : "Please fill this in."; }
      else if (type === "email" && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(v)) problem = "Please enter a valid email address.";
      else answers[id] = v;
    }
    mark(el, problem);
    if (problem && !invalid) invalid = el;
  });
  return {answers: answers, invalid: invalid};
}
function showErrors(errors){
  var first = null;
  (errors || []).forEach(function(e){
    if (!e.field || e.field.indexOf("answers.") !== 0) return;
    var el = document.getElementById("q-" + e.field.slice(8));
    if (!el) return;
    mark(el, "This answer " + e.message + ".");
    if (!first) first = el;
  });
  if (first) first.focus();
  return !!first;
}
window.calmeshQuestions = {collect: collect, showErrors: showErrors};
})();
"""


def message_page_html(title: str, text: str, *, status_code: int = 200) -> str:
    esc = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · CalMesh</title><style>{_CSS % {"color": DEFAULT_COLOR}}</style></head>
<body><main id="main"><h1>{esc(title)}</h1><p>{esc(text)}</p></main></body></html>
"""


_CANCEL_JS = r"""
(function(){
"use strict";
var form = document.getElementById("cancel-form"), status = document.getElementById("status");
form.addEventListener("submit", function(ev){
  ev.preventDefault();
  var btn = document.getElementById("cancel-btn"); btn.disabled = true; status.textContent = "Cancelling…";
  var reason = document.getElementById("reason").value.trim();
  fetch(form.getAttribute("data-action"), {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(reason ? {reason: reason} : {})}).then(function(r){
    return r.json().then(function(b){
      if (r.status === 200) { form.hidden = true; status.textContent = "Your booking is cancelled. Both of you will get an email."; }
      else { btn.disabled = false; status.textContent = (b && b.detail) || "Could not cancel; try again."; }
    });
  }, function(){ btn.disabled = false; status.textContent = "Could not reach the server; try again."; });
});
})();
"""


def cancel_page_html(*, title: str, when_utc: str, status: str, api_url: str) -> str:
    """The page a mailed cancel link opens: it asks before cancelling (link scanners only GET)."""
    esc = html.escape
    body = (
        "<p>This booking is already cancelled.</p>"
        if status == "cancelled"
        else f"""<form id="cancel-form" data-action="{esc(api_url)}">
<label for="reason">Reason <span class="muted">(optional)</span></label>
<textarea id="reason" name="reason" maxlength="1000"></textarea>
<div class="actions"><button type="submit" id="cancel-btn" class="primary">Cancel booking</button></div>
</form>"""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cancel {esc(title)} · CalMesh</title><style>{_CSS % {"color": DEFAULT_COLOR}}</style></head>
<body><main id="main" aria-labelledby="h"><h1 id="h">Cancel {esc(title)}</h1>
<p>Booked for <time id="when" datetime="{esc(when_utc)}">{esc(when_utc)}</time>.</p>
{body}
<div id="status" role="status" aria-live="polite"></div></main>
<script>
(function(){{var t=document.getElementById("when");try{{t.textContent=new Intl.DateTimeFormat(undefined,{{dateStyle:"full",timeStyle:"short"}}).format(new Date(t.getAttribute("datetime")));}}catch(e){{}}}})();
</script>
<script>{_CANCEL_JS}</script>
</body></html>
"""


EMBED_JS = r"""/* CalMesh embed: <div data-calmesh-handle="you" data-calmesh-slug="intro" data-mode="inline|popup" data-color="#f97316"></div> */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) {
    var all = document.querySelectorAll('script[src*="embed.js"]');
    script = all[all.length - 1];
  }
  var origin = new URL(script ? script.src : "/embed.js", window.location.href).origin;
  var frames = [];

  function color(el) {
    var c = el.getAttribute("data-color") || "";
    return /^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$/.test(c) ? c : "#2563eb";
  }

  function frameFor(el, title) {
    var f = document.createElement("iframe");
    var url = origin + "/" + encodeURIComponent(el.getAttribute("data-calmesh-handle")) + "/" +
      encodeURIComponent(el.getAttribute("data-calmesh-slug")) + "?embed=1&color=" + encodeURIComponent(color(el));
    f.src = url;
    f.title = title;
    f.setAttribute("loading", "lazy");
    f.style.cssText = "width:100%;min-width:280px;height:640px;border:0;display:block;background:transparent";
    frames.push(f);
    return f;
  }

  function inline(el) {
    el.appendChild(frameFor(el, "Book a time"));
  }

  function popup(el) {
    var c = color(el);
    var button = document.createElement("button");
    button.type = "button";
    button.className = "calmesh-popup-button";
    button.textContent = el.getAttribute("data-label") || "Book a time";
    button.setAttribute("aria-haspopup", "dialog");
    button.style.cssText = "font:600 16px/1.2 system-ui,sans-serif;padding:12px 20px;border-radius:8px;border:0;cursor:pointer;color:#fff;background:" + c;
    el.appendChild(button);

    var overlay = null, frame = null;
    function close() {
      if (!overlay) return;
      overlay.style.display = "none";
      document.removeEventListener("keydown", onKey, true);
      button.focus();
    }
    function onKey(e) { if (e.key === "Escape") { e.preventDefault(); close(); } }
    function open() {
      if (!overlay) {
        overlay = document.createElement("div");
        overlay.className = "calmesh-overlay";
        overlay.style.cssText = "position:fixed;inset:0;z-index:2147483000;background:rgba(17,24,39,.55);display:flex;align-items:center;justify-content:center;padding:16px";
        var dialog = document.createElement("div");
        dialog.setAttribute("role", "dialog");
        dialog.setAttribute("aria-modal", "true");
        dialog.setAttribute("aria-label", "Book a time");
        dialog.style.cssText = "position:relative;background:#fff;border-radius:12px;width:min(720px,100%);max-height:calc(100vh - 32px);overflow:auto;box-shadow:0 20px 50px rgba(0,0,0,.3)";
        var x = document.createElement("button");
        x.type = "button";
        x.className = "calmesh-close";
        x.setAttribute("aria-label", "Close");
        x.textContent = "\u00d7";
        x.style.cssText = "position:absolute;top:6px;right:6px;z-index:1;width:40px;height:40px;border:0;border-radius:20px;background:#f3f4f6;font:24px/1 system-ui,sans-serif;cursor:pointer";
        x.addEventListener("click", close);
        frame = frameFor(el, "Book a time");
        frame.removeAttribute("loading");
        frame.calmeshClose = close;
        dialog.appendChild(x);
        dialog.appendChild(frame);
        overlay.appendChild(dialog);
        overlay.addEventListener("click", function (e) { if (e.target === overlay) close(); });
        document.body.appendChild(overlay);
      }
      overlay.style.display = "flex";
      document.addEventListener("keydown", onKey, true);
      frame.focus();
    }
    button.addEventListener("click", open);
  }

  window.addEventListener("message", function (e) {
    if (e.origin !== origin || !e.data) return;
    for (var i = 0; i < frames.length; i++) {
      if (frames[i].contentWindow !== e.source) continue;
      if (e.data.type === "calmesh:resize") {
        var h = Math.max(200, Math.min(4000, Number(e.data.height) || 0));
        frames[i].style.height = h + "px";
      } else if (e.data.type === "calmesh:close" && frames[i].calmeshClose) {
        frames[i].calmeshClose();
      }
    }
  });

  function init() {
    var nodes = document.querySelectorAll("[data-calmesh-handle][data-calmesh-slug]");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      if (el.getAttribute("data-calmesh-ready")) continue;
      el.setAttribute("data-calmesh-ready", "1");
      if ((el.getAttribute("data-mode") || "inline") === "popup") popup(el); else inline(el);
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
"""


def verify_page_html(*, title: str, owner_name: str, when: str, action: str) -> str:
    """The page a verification mail links to: it asks before confirming (mail scanners follow links
    with GET, so only the button's POST confirms). A plain form: no script at all."""
    esc = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Confirm your booking · CalMesh</title><style>{_CSS % {"color": DEFAULT_COLOR}}</style></head>
<body><main id="main" aria-labelledby="h"><h1 id="h">Confirm your booking</h1>
<p>{esc(title)} with {esc(owner_name)}</p>
<p>{esc(when)}</p>
<form method="post" action="{esc(action)}">
<div class="actions"><button type="submit" class="primary">Confirm booking</button></div>
</form>
<p class="muted">If you did not ask for this booking, close this page: the time is released on its own.</p>
</main></body></html>
"""
