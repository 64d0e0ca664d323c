"""The connections commands, one module per resource: `connections` (create, sync, remove),
`authorization` (the browser's side of the OAuth flow), `calendars` (unified calendars and their
sources) and `internal` (what the other services ask over the internal API). A handler loads what
it needs from the store, asks the domain, writes the change with its event in one transaction, and
answers the API's structs; the routes (`api.py`, `internal.py`) only translate HTTP.
"""
