"""The dashboard at /app: server-rendered pages for a signed-in user, a client of the public API.

Pages are Jinja2 templates rendered here from what the public API answers (called over HTTP with
the visitor's own session cookie, as any client would); every change a user makes is sent by a
small script of ours straight to the public API, with the CSRF token, so the dashboard itself has no
endpoint that changes anything. See the README's "Dashboard" section for why it lives here.
"""
