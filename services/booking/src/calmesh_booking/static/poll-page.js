/* CalMesh poll page (served by booking at /assets/booking/poll-page.<hash>.js): writes each
   option's time in the visitor's own time zone, names the zone, and posts the vote to the public
   votes endpoint (the poll's token is in the URL, so no cookies are sent). */
(function(){
"use strict";
var cfg = JSON.parse(document.getElementById("calmesh-config").textContent);
var tz = "UTC";
try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) {}
document.getElementById("tz-name").textContent = tz.replace(/_/g, " ");
var day = new Intl.DateTimeFormat(undefined, {dateStyle: "full", timeStyle: "short", timeZone: tz});
var hour = new Intl.DateTimeFormat(undefined, {timeStyle: "short", timeZone: tz});
var times = document.querySelectorAll("time[datetime]");
for (var i = 0; i < times.length; i++) {
  var t = times[i], end = t.getAttribute("data-end");
  t.textContent = day.format(new Date(t.getAttribute("datetime"))) + (end ? " – " + hour.format(new Date(end)) : "");
}
var form = document.getElementById("vote-form"), status = document.getElementById("status");
if (!form) return;  // decided: nothing to vote on
var btn = document.getElementById("vote-btn");

function clearErrors() {
  var errs = form.querySelectorAll(".field-error");
  for (var i = 0; i < errs.length; i++) { errs[i].hidden = true; errs[i].textContent = ""; }
  var bad = form.querySelectorAll("[aria-invalid]");
  for (var j = 0; j < bad.length; j++) bad[j].removeAttribute("aria-invalid");
}
function showError(field, message) {
  var el = document.getElementById(field + "-error") || document.getElementById("choices-error");
  el.textContent = message; el.hidden = false;
  var input = document.getElementById(field);
  if (input) input.setAttribute("aria-invalid", "true");
  return input;
}
function closed(message) {
  form.hidden = true;
  status.textContent = message || "This poll is decided and takes no more votes. Reload to see the time.";
}

form.addEventListener("submit", function(ev){
  ev.preventDefault();
  clearErrors(); status.className = "";
  var name = document.getElementById("name").value.trim(), email = document.getElementById("email").value.trim();
  var choices = {}, radios = form.querySelectorAll("input[type=radio]:checked");
  for (var i = 0; i < radios.length; i++) choices[radios[i].getAttribute("data-option")] = radios[i].value;
  if (!name) { showError("name", "Enter your name.").focus(); return; }
  if (!radios.length) { showError("choices", "Answer at least one time."); return; }
  var body = {name: name, choices: choices};
  if (email) body.email = email;
  btn.disabled = true; status.textContent = "Sending…";
  fetch(cfg.api, {method: "POST", credentials: "omit",
    headers: {"Content-Type": "application/json", "Accept": "application/json"}, body: JSON.stringify(body)}).then(function(r){
    return r.json().then(function(b){
      btn.disabled = false;
      if (r.status === 201) { status.textContent = "Thank you, " + b.name + ": your vote is in. Send again to change it."; return; }
      if (r.status === 409) { closed(); return; }
      var first = null;
      (b && b.errors || []).forEach(function(e){ var el = showError(e.field, e.message); first = first || el; });
      if (first) first.focus();
      status.className = "error";
      status.textContent = (b && b.detail) || "Could not send the vote; try again.";
    });
  }, function(){ btn.disabled = false; status.className = "error"; status.textContent = "Could not reach the server; try again."; });
});
})();
