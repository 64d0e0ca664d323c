"""The guarded client on redirects (issue 10, item 2): a CalDAV server that answers 301 to another
origin must not receive the user's password there, and an https → http hop is refused. Real
servers on loopback (plain and TLS) record the headers each request brought."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from calmesh_common.guarded import FetchError, GuardedClient
from calmesh_providers import ProviderError, SourceError
from calmesh_providers.caldav import CalDAVClient

BASIC = "Basic YWRhOmNhbGRhdi1wYXNzd29yZA=="  # ada:caldav-password
MULTISTATUS = b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:"/>'


@dataclass
class DavServer:
    """A CalDAV-ish server: PROPFIND/GET/REPORT answered by `routes` (path -> (status, location)),
    else 207 multistatus; every request's method, path and headers are kept in `seen`."""

    routes: dict[str, tuple[int, str]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, location = server.routes.get(self.path, (207, ""))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                body = b"" if location else MULTISTATUS
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PROPFIND = do_REPORT = _answer

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def headers_at(self, path: str) -> list[dict[str, str]]:
        return [h for _, p, h in self.seen if p == path]


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[str, str, ssl.SSLContext]]:
    """A self-signed certificate for 127.0.0.1: (cert file, key file, a client context trusting it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        client = ssl.create_default_context(cafile=str(cert_file))
        yield str(cert_file), str(key_file), client


def _run(dav: DavServer, tls_files: tuple[str, str] | None = None) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), dav.handler())
    scheme = "http"
    if tls_files is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls_files)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    dav.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def servers(tls: tuple[str, str, ssl.SSLContext]) -> Iterator[tuple[DavServer, DavServer, DavServer]]:
    """(a plain server, another plain server on another port, a TLS server)."""
    first, other, secure = DavServer(), DavServer(), DavServer()
    running = [_run(first), _run(other), _run(secure, tls[:2])]
    try:
        yield first, other, secure
    finally:
        for httpd in running:
            httpd.shutdown()
            httpd.server_close()


def client(tls: tuple[str, str, ssl.SSLContext]) -> GuardedClient:
    return GuardedClient(allow_private_networks=True, timeout=10,
                         transport=httpx.AsyncHTTPTransport(verify=tls[2]))


CREDENTIALS = {"Authorization": BASIC, "Cookie": "session=abc", "Depth": "0"}


async def test_a_same_origin_redirect_keeps_the_credentials(servers, tls) -> None:
    first, _, _ = servers
    first.routes["/dav/"] = (301, "/dav/principals/ada/")
    guarded = client(tls)
    try:
        result = await guarded.fetch(f"{first.url}/dav/", method="PROPFIND", headers=CREDENTIALS)
    finally:
        await guarded.aclose()
    assert result.status == 207 and result.url == f"{first.url}/dav/principals/ada/"
    [moved] = first.headers_at("/dav/principals/ada/")
    assert moved["authorization"] == BASIC and moved["cookie"] == "session=abc"
    assert [m for m, p, _ in first.seen] == ["PROPFIND", "PROPFIND"]  # a 301 keeps PROPFIND


async def test_a_cross_origin_redirect_drops_every_credential(servers, tls) -> None:
    first, other, _ = servers
    first.routes["/dav/"] = (301, f"{other.url}/dav/")  # same host, another port: another origin
    other.routes["/dav/"] = (302, f"{first.url}/dav/back/")  # and back to the first origin
    guarded = client(tls)
    try:
        result = await guarded.fetch(f"{first.url}/dav/", method="PROPFIND", headers=CREDENTIALS)
    finally:
        await guarded.aclose()
    assert result.status == 207
    [at_other] = other.headers_at("/dav/")
    assert "authorization" not in at_other and "cookie" not in at_other
    assert at_other["depth"] == "0"  # other headers still go
    # Back on the origin the credentials were given for, they are sent again.
    [back] = first.headers_at("/dav/back/")
    assert back["authorization"] == BASIC


async def test_an_https_to_http_redirect_is_refused(servers, tls) -> None:
    first, _, secure = servers
    secure.routes["/dav/"] = (301, f"{first.url}/dav/")
    guarded = client(tls)
    try:
        with pytest.raises(FetchError, match="from https to http"):
            await guarded.fetch(f"{secure.url}/dav/", method="PROPFIND", headers=CREDENTIALS)
    finally:
        await guarded.aclose()
    assert secure.headers_at("/dav/")[0]["authorization"] == BASIC  # the https origin itself got them
    assert first.seen == []  # the plain-http target was never contacted


async def test_the_caldav_client_does_not_send_the_password_to_another_host(servers, tls) -> None:
    """Every caller of the guarded client gets the rule: here the CalDAV provider's discovery."""
    first, other, _ = servers
    first.routes["/"] = (301, f"{other.url}/")
    first.routes["/.well-known/caldav"] = (301, f"{other.url}/")
    guarded = client(tls)
    caldav = CalDAVClient(guarded, f"{first.url}/", "ada", "caldav-password")
    try:
        # The servers' empty multistatus lists no calendar; what matters is who got the password.
        with contextlib.suppress(ProviderError, SourceError, FetchError):
            await caldav.discover()
    finally:
        await caldav.aclose()
        await guarded.aclose()
    assert other.seen, "the redirect was followed"
    assert all("authorization" not in h for _, _, h in other.seen)
    assert first.seen and all(h.get("authorization") == BASIC for _, _, h in first.seen)
