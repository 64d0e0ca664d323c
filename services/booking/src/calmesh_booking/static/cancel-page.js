/* CalMesh cancel page (served by booking at /assets/booking/cancel-page.<hash>.js): shows the
   booked time in the visitor's own timezone and cancels after the visitor confirms (a link
   scanner only GETs the page). The API URL is the form's data-action. */
(function(){
"use strict";
var when = document.getElementById("when");
try {
  when.textContent = new Intl.DateTimeFormat(undefined, {dateStyle: "full", timeStyle: "short"}).format(new Date(when.getAttribute("datetime")));
} catch (e) {}
var form = document.getElementById("cancel-form"), status = document.getElementById("status");
if (!form) return;  // already cancelled: nothing to ask
form.addEventListener("submit", function(ev){
  ev.preventDefault();
  var btn = document.getElementById("cancel-btn"); btn.disabled = true; status.textContent = "Cancelling…";
  var reason = document.getElementById("reason").value.trim();
  // The signed link authorizes the cancellation: no cookies, so the owner's session plays no part.
  fetch(form.getAttribute("data-action"), {method: "POST", credentials: "omit", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(reason ? {reason: reason} : {})}).then(function(r){
    return r.json().then(function(b){
      if (r.status === 200) { form.hidden = true; status.textContent = "Your booking is cancelled. Both of you will get an email."; }
      else { btn.disabled = false; status.textContent = (b && b.detail) || "Could not cancel; try again."; }
    });
  }, function(){ btn.disabled = false; status.textContent = "Could not reach the server; try again."; });
});
})();
