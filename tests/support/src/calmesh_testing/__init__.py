"""CalMesh test support: installed into the development environment (`make install`), never into
the runtime image.

- `backends`: PostgreSQL and NATS for a test session (`postgres_url`, `nats_url`)
- `servers`: ASGI apps on loopback in the test's event loop (`Served`, `serve`, `free_port`)
- `wait`: `wait_for`, the one poll loop
- `radicale`: a real CalDAV server (`Radicale`, `radicale`)
- `booking`: the booking service against fakes of connections and sync (`BookingHarness`), and a
  platform owner on a Radicale calendar (`sign_up_with_caldav`)
- `platform`: connections and sync in-process on a private database and NATS (`private_platform`, `running`)
- `stackutil`: calling the session stack's services as the gateway does
- fakes of providers: `google`, `graph`, `oauth`, `mollie`; iCal feeds (`feeds`); npm tools (`npm`)
- `reference`: an independent expansion of iCalendar objects to compare the sync with
- `nats_cluster`: a JetStream cluster of nats-server processes
"""
