"""The public booking page, the cancel page a mailed link opens, and /embed.js.

Server-rendered HTML, no framework: the page is one request, then its script calls the public JSON
endpoints on the same origin (the gateway). The pages carry no inline script or style: both are
files of ``static/`` served under fingerprinted names (`assets`), and the only ``<script>`` element
with content is the page's configuration as ``type="application/json"``, which no browser runs. So
the pages' Content-Security-Policy (`PAGE_CSP`) allows scripts and styles from the page's origin
only, and still lets any site frame the page (embeds).

The booking page is usable by keyboard (native buttons and form controls, visible focus, focus moved to each next step), announces results
in an ``aria-live`` region, detects the visitor's timezone with ``Intl.DateTimeFormat`` and lets them
change it, and fits a phone. Embedded (``?embed=1``) it drops its outer margins and posts its height
to the parent so the iframe can fit it.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from .assets import ASSETS

_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
DEFAULT_COLOR = "#2563eb"
#: The pages' policy: nothing but this origin's files and API; framing by any site (embed.js).
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "form-action 'self'; base-uri 'none'; frame-ancestors *")


def safe_color(value: str | None) -> str:
    """Only a #rgb or #rrggbb colour reaches CSS."""
    return value if value and _COLOR.match(value) else DEFAULT_COLOR


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def booking_page_html(page: dict[str, Any], *, owner_name: str, embed: bool, color: str | None,
                      reschedule: dict[str, str] | None = None) -> str:
    """The booking page of `page` (a stored page row as a dict); with `reschedule` (``id``, ``start``,
    ``end``, ``api``: a booking whose reschedule link was checked) the page that moves that booking."""
    esc = html.escape
    cfg: dict[str, Any] = {"handle": page["handle"], "slug": page["slug"], "timezone": page["timezone"],
                           "color": safe_color(color)}
    if reschedule is not None:
        cfg["reschedule"] = reschedule
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
<link rel="stylesheet" href="{ASSETS.url("booking.css")}">
</head>
<body class="{'embed' if embed else ''}">
<a class="skip" href="#main">Skip to booking</a>
<main id="main" aria-labelledby="page-title">
<header>
<h1 id="page-title">{title}</h1>
<p class="muted">{int(page["duration_minutes"])} minutes · with {esc(owner_name)}</p>
{description}
</header>
<section id="step-move" aria-labelledby="move-heading"{"" if reschedule else " hidden"}>
<h2 id="move-heading">Reschedule your booking</h2>
<p>Booked now: <strong id="move-current"></strong>. Pick a new time below.</p>
</section>
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
<section id="step-confirm-move" aria-labelledby="confirm-move-heading" hidden>
<h2 id="confirm-move-heading" tabindex="-1">Move your booking</h2>
<p>New time: <strong id="move-chosen"></strong></p>
<div class="actions">
<button type="button" id="move-btn" class="primary">Move booking</button>
<button type="button" id="move-back">Back</button>
</div>
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
{f'<script src="{ASSETS.url("questions.js")}"></script>' if questions else ""}
<script src="{ASSETS.url("booking-page.js")}"></script>
</body>
</html>
"""


def message_page_html(title: str, text: str, *, status_code: int = 200) -> str:
    esc = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · CalMesh</title><link rel="stylesheet" href="{ASSETS.url("booking.css")}"></head>
<body><main id="main"><h1>{esc(title)}</h1><p>{esc(text)}</p></main></body></html>
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
<title>Cancel {esc(title)} · CalMesh</title><link rel="stylesheet" href="{ASSETS.url("booking.css")}"></head>
<body><main id="main" aria-labelledby="h"><h1 id="h">Cancel {esc(title)}</h1>
<p>Booked for <time id="when" datetime="{esc(when_utc)}">{esc(when_utc)}</time>.</p>
{body}
<div id="status" role="status" aria-live="polite"></div></main>
<script src="{ASSETS.url("cancel-page.js")}"></script>
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


# --- questions: the page's own fields, between the visitor's email and notes -------------------------


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


_CHOICES = (("yes", "Yes"), ("maybe", "If need be"), ("no", "No"))


def poll_page_html(poll: dict[str, Any], *, closed: bool, api_url: str) -> str:
    """A poll's public voting page (`poll` as the API answers it): each option a group of yes /
    if need be / no radios whose legend is the option's time (``<time datetime>``, shown in UTC
    until poll-page.js writes it in the visitor's zone); `closed` (decided or past its deadline)
    shows the decided time, if any, and no form. The form posts to `api_url`."""
    esc = html.escape
    title = esc(poll["title"])

    def when(o: dict[str, Any]) -> str:
        return (f'<time datetime="{esc(o["start"])}" data-end="{esc(o["end"])}">'
                f'{esc(o["start"])} – {esc(o["end"])}</time>')

    if closed:
        chosen = next((o for o in poll["options"] if o["id"] == poll.get("decided_option_id")), None)
        body = (f'<section id="decided" class="done" aria-labelledby="decided-h"><h2 id="decided-h">This poll is decided</h2>'
                f'<p>The time is {when(chosen)}.</p><p class="muted">It takes no more votes.</p></section>'
                if chosen else '<p id="decided">This poll is closed and takes no more votes.</p>')
    else:
        groups = []
        for i, o in enumerate(poll["options"], 1):
            oid = esc(o["id"])
            radios = "".join(
                f'<div class="check"><input type="radio" id="c-{oid}-{value}" name="choice-{oid}" value="{value}"'
                f' data-option="{oid}"><label for="c-{oid}-{value}">{text}</label></div>'
                for value, text in _CHOICES)
            groups.append(f'<fieldset class="option" aria-describedby="choices.{oid}-error">'
                          f'<legend>Option {i}: {when(o)}</legend>{radios}'
                          f'<p id="choices.{oid}-error" class="field-error" hidden></p></fieldset>')
        body = f"""<form id="vote-form" novalidate>
<label for="name">Name</label>
<input id="name" name="name" autocomplete="name" required maxlength="200" aria-describedby="name-error">
<p id="name-error" class="field-error" hidden></p>
<label for="email">Email <span class="muted">(optional)</span></label>
<input id="email" name="email" type="email" autocomplete="email" maxlength="254" aria-describedby="email-error">
<p id="email-error" class="field-error" hidden></p>
<h2>Which times can you make?</h2>
{chr(10).join(groups)}
<p id="choices-error" class="field-error" hidden></p>
<div class="actions"><button type="submit" id="vote-btn" class="primary">Send vote</button></div>
</form>"""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Vote · CalMesh</title>
<link rel="stylesheet" href="{ASSETS.url("booking.css")}">
</head>
<body>
<main id="main" aria-labelledby="page-title">
<header>
<h1 id="page-title">{title}</h1>
<p class="muted">{int(poll["duration_minutes"])} minutes · times in <span id="tz-name">UTC</span></p>
</header>
{body}
<div id="status" role="status" aria-live="polite" aria-atomic="true"></div>
</main>
<script id="calmesh-config" type="application/json">{_script_json({"api": api_url})}</script>
<script src="{ASSETS.url("poll-page.js")}"></script>
</body>
</html>
"""


def verify_page_html(*, title: str, owner_name: str, when: str, action: str) -> str:
    """The page a verification mail links to: it asks before confirming (mail scanners follow links
    with GET, so only the button's POST confirms). A plain form: no script at all."""
    esc = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Confirm your booking · CalMesh</title><link rel="stylesheet" href="{ASSETS.url("booking.css")}"></head>
<body><main id="main" aria-labelledby="h"><h1 id="h">Confirm your booking</h1>
<p>{esc(title)} with {esc(owner_name)}</p>
<p>{esc(when)}</p>
<form method="post" action="{esc(action)}">
<div class="actions"><button type="submit" class="primary">Confirm booking</button></div>
</form>
<p class="muted">If you did not ask for this booking, close this page: the time is released on its own.</p>
</main></body></html>
"""
