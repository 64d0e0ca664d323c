/* CalMesh public booking page (served by booking at /assets/booking/booking-page.<hash>.js).
   Its configuration is the page's <script id="calmesh-config" type="application/json">: the page
   has no inline script, so its Content-Security-Policy can say script-src 'self'. */
(function(){
"use strict";
var cfg = JSON.parse(document.getElementById("calmesh-config").textContent);
// The page's accent colour (?color=, checked by the server): set through the CSSOM, which the
// CSP's style-src 'self' allows (an inline style would not be).
if (cfg.color) document.documentElement.style.setProperty("--accent", cfg.color);
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

// The page's own links authorize it (a public page, a signed reschedule link): it never sends the
// visitor's cookies, so a CalMesh owner signed in in this browser books and moves like any visitor.
function api(path, options){
  return fetch(path, Object.assign({credentials: "omit"}, options)).then(function(r){
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
  if (moving) {
    $("move-chosen").textContent = longLabel(s.start);
    show("step-confirm-move", true);
    $("confirm-move-heading").focus();
    return;
  }
  $("chosen").textContent = longLabel(s.start);
  show("step-form", true);
  $("name").focus();
}

// Opened from the mail's reschedule link: pick a time, then move the booking (same booking, same
// calendar event) with the link's signature instead of booking a new one.
var moving = cfg.reschedule || null;
function showCurrent(){ if (moving) $("move-current").textContent = longLabel(moving.start); }
if (moving) {
  showCurrent();
  tzSelect.addEventListener("change", showCurrent);
  $("move-back").addEventListener("click", function(){ show("step-confirm-move", false); $("slot-heading").focus(); });
  $("move-btn").addEventListener("click", function(){
    if (state.busy || !state.slot) return;
    state.busy = true; $("move-btn").disabled = true; say("Moving your booking…");
    api(moving.api, {method: "POST", headers: {"Content-Type": "application/json"},
                     body: JSON.stringify({start: state.slot.start})}).then(function(res){
      state.busy = false; $("move-btn").disabled = false;
      if (res.status === 200) {
        moving.start = res.body.start;
        $("done-heading").textContent = "Your booking has moved";
        $("done-when").textContent = longLabel(res.body.start);
        show("done-sent", false); show("done-cancel", false); show("done-verify", false);
        show("step-move", false); show("step-day", false); show("step-slot", false); show("step-confirm-move", false);
        show("tz-section", false); show("step-done", true);
        say("Moved to " + longLabel(res.body.start) + ". An updated invitation is on its way.");
        $("done-heading").focus();
      } else if (res.status === 409 && res.body && res.body.code === "booking_cancelled") {
        say("This booking was cancelled; it cannot be moved.", true);
      } else if (res.status === 409) {
        say("Sorry, that time was just taken. Please pick another.", true);
        show("step-confirm-move", false); load(state.from);
      } else if (res.status === 403 || res.status === 401) {
        say("This reschedule link is not valid or has expired.", true);
      } else {
        say((res.body && res.body.detail) || "Something went wrong; please try again.", true);
      }
    }, function(){ state.busy = false; $("move-btn").disabled = false; say("Could not reach the server; please try again.", true); });
  });
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
