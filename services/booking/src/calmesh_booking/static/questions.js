/* CalMesh booking page questions (served by booking at /assets/booking/questions.<hash>.js): reads the
   page's question fields into `answers` (a checkbox as a boolean, an empty optional field left out),
   checks what the browser can (required, email), and shows a 422's `answers.<id>` errors beside their
   fields. booking-page.js calls it through `window.calmeshQuestions`. */
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
