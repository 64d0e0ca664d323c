"""The connections commands, one module per resource: `connections` (create, sync, remove),
`authorization` (the browser's side of the OAuth flow) and `calendars` (unified calendars and their
sources). A handler loads what it needs from the store, asks the domain, writes the change with its
event in one transaction, and answers the API's structs; the routes (`api.py`) only translate HTTP.
"""
