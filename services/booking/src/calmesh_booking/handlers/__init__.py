"""Command handlers of the booking context, one module per resource: load state, decide with the
domain, store and append.

- `context`: the `BookingContext` the lifespan builds and what several handlers share (scopes,
  problems, the Idempotency-Key wrapper, a page's rules and calendar, list pages);
- `pages`: booking pages and the slots they offer;
- `bookings`: bookings, verification, cancel, reschedule, signed links, holds and the hold timer;
- `polls`: scheduling polls, votes, overlap and the decision.

Each public function takes the `BookingContext` and a command, and returns a plain resource dict
(or an `Answer`) or raises `Problem`. They know nothing of HTTP beyond status codes, so the tests
can call them directly, and the API module stays thin.
"""
