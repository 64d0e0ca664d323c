"""The CalDAV REPORT bodies are built by caldav's element builders, not by hand: a sync token or an
href that holds XML's special characters reaches the server as the same text. Checked by parsing the
bytes, and against a real Radicale with an object whose name holds `&`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import icalendar

from calmesh_common.guarded import GuardedClient
from calmesh_providers.caldav import CalDAVClient, multiget_body, sync_collection_body
from calmesh_testing.radicale import radicale

D, C = "{DAV:}", "{urn:ietf:params:xml:ns:caldav}"
ODD = 'a&b <c> "d" ]]> e'


def test_a_sync_token_with_xml_specials_is_sent_as_the_same_text() -> None:
    root = ET.fromstring(sync_collection_body(ODD))
    assert root.tag == f"{D}sync-collection"
    assert root.findtext(f"{D}sync-token") == ODD
    assert root.findtext(f"{D}sync-level") == "1"
    assert [e.tag for e in root.find(f"{D}prop") or []] == [f"{D}getetag"]
    # No token yet: an empty one (RFC 6578 3.2, the initial sync).
    assert ET.fromstring(sync_collection_body(None)).findtext(f"{D}sync-token") == ""


def test_multiget_hrefs_with_xml_specials_are_sent_as_the_same_text() -> None:
    hrefs = ["/ada/work/plain.ics", f"/ada/work/{ODD}.ics"]
    root = ET.fromstring(multiget_body(hrefs))
    assert root.tag == f"{C}calendar-multiget"
    assert [e.text for e in root.findall(f"{D}href")] == hrefs
    assert [e.tag for e in root.find(f"{D}prop") or []] == [f"{D}getetag", f"{C}calendar-data"]


async def test_an_object_whose_name_holds_an_ampersand_syncs_from_radicale() -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with radicale() as server:
        url = server.make_calendar("work", "Tom & Jerry <shared>")
        for name, uid in (("plain.ics", "plain"), ("tom&jerry.ics", "tom-and-jerry")):
            server.put("work", name, (
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CalMesh tests//EN\r\nBEGIN:VEVENT\r\n"
                f"UID:{uid}\r\nDTSTAMP:{stamp}\r\nDTSTART:20261207T090000Z\r\nDTEND:20261207T100000Z\r\n"
                f"SUMMARY:{uid}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"))
        guarded = GuardedClient(allow_private_networks=True, timeout=10)
        client = CalDAVClient(guarded, url, server.username, server.password)
        try:
            [calendar] = await client.discover()
            assert calendar.name == "Tom & Jerry <shared>"  # the test harness's MKCALENDAR escaped it too
            changed, deleted, token = await client.changes_since(url, None)
            assert token and deleted == []
            assert sorted(changed) == [f"{url}plain.ics", f"{url}tom&jerry.ics"]
            objects = await client.fetch(url, sorted(changed))
            # Both objects come back, under the hrefs the sync asked for (what the engine matches on).
            assert {o.href: str(icalendar.Calendar.from_ical(o.data).walk("VEVENT")[0]["UID"]) for o in objects} == {
                f"{url}plain.ics": "plain", f"{url}tom&jerry.ics": "tom-and-jerry"}
            # Nothing changed since that token: asked again with it, the server names nothing.
            again, gone, _ = await client.changes_since(url, token)
            assert (again, gone) == ({}, [])
        finally:
            await client.aclose()
            await guarded.aclose()
