"""The guarded HTTP client: the one way CalMesh fetches a URL that a user gave.

- only ``http``, ``https`` and ``webcal`` (read as https);
- the host is resolved once, and every address must be public: private, loopback, link-local,
  shared (CGNAT), multicast, reserved, unspecified and cloud-metadata addresses are refused,
  IPv4-mapped/compatible IPv6 forms included; the connection then goes to the address that was
  checked (no second lookup that could answer differently), with the original Host and TLS name;
- every redirect is checked the same way, up to `max_redirects`; credentials (``Authorization``,
  ``Cookie``, ``Proxy-Authorization``) go only to the origin they were given for, never to a hop on
  another scheme, host or port, and a redirect from https to http is refused;
- the body is capped at `max_bytes` and the whole exchange at `timeout` seconds.

``allow_private_networks`` lifts only the address rule (local development and tests);
``allowed_endpoints`` lifts it for a few exact ``(address, port)`` pairs only (`calmesh-up --demo`
lets its own loopback calendar servers be fetched this way, and nothing else on loopback).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from .addresses import address_refusal

_REDIRECTS = {301, 302, 303, 307, 308}


#: Request headers that carry credentials: sent only to the origin of the URL they were given for.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the default port made explicit."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class FetchError(Exception):
    """A URL could not be fetched safely; the message is fit for a user's `last_error`."""


@dataclass(frozen=True)
class FetchResult:
    status: int
    headers: Mapping[str, str]  # case-insensitive: httpx's headers, or aiohttp's (webhooks' transport)
    body: bytes
    url: str


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"127.0.0.1:5232"`` or ``"[::1]:5232"`` → (address, port); ValueError when it is not an IP
    literal with a port (a host name would be resolved again, and could answer otherwise)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not address:port")
    address = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    return str(address), int(port)


def normalise_url(url: str) -> str:
    """Check the scheme and turn ``webcal://`` into ``https://``; raises FetchError."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("the URL is empty")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "webcal":
        scheme = "https"
    if scheme not in ("http", "https"):
        raise FetchError(f"only http, https and webcal URLs can be fetched, not {parts.scheme or 'a relative'!s}: URL")
    if not parts.hostname:
        raise FetchError("the URL has no host")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


class GuardedClient:
    """Fetches user-given URLs safely. One instance per process; `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        allow_private_networks: bool = False,
        allowed_endpoints: Collection[tuple[str, int]] = (),
        max_bytes: int = 10 * 1024 * 1024,
        timeout: float = 20.0,
        max_redirects: int = 5,
        user_agent: str = "CalMesh/1.0 (+https://calmesh.xyz)",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allow_private_networks = allow_private_networks
        #: (address, port) pairs that may be fetched although their address is not public.
        self.allowed_endpoints = frozenset((str(ipaddress.ip_address(a)), int(p)) for a, p in allowed_endpoints)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": user_agent},
            transport=transport,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _resolve(self, host: str, port: int) -> str:
        """Resolve `host` once and return the address to connect to, after checking them all."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise FetchError(f"the host {host} could not be resolved") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))  # an IP address (str) here
        if not addresses:
            raise FetchError(f"the host {host} has no address")
        if not self.allow_private_networks:
            for ip in addresses:
                if (str(ipaddress.ip_address(ip)), port) in self.allowed_endpoints:
                    continue
                reason = address_refusal(ip)
                if reason:
                    raise FetchError(f"refused to fetch {host}: {reason}")
        return addresses[0]

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        max_bytes: int | None = None,
    ) -> FetchResult:
        """Fetch `url`, following checked redirects; raises FetchError with a readable reason."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(normalise_url(url), method, dict(headers or {}), content, limit)
        except TimeoutError:
            raise FetchError(f"no complete answer within {self.timeout:g} s") from None

    async def _fetch(
        self, url: str, method: str, headers: dict[str, str], content: bytes | None, limit: int
    ) -> FetchResult:
        """Follow redirects hop by hop, each one checked and sent through `send`. Credentials
        (``Authorization``, ``Cookie``, ``Proxy-Authorization``) go only to the origin they were
        meant for: a hop to another scheme, host or port gets none of them, and an https → http
        hop is refused outright."""
        first = _origin(url)
        credentials = {k: v for k, v in headers.items() if k.lower() in CREDENTIAL_HEADERS}
        plain = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
        for hop in range(self.max_redirects + 1):
            sent = {**plain, **credentials} if _origin(url) == first else plain
            result = await self.send(url, method=method, headers=sent, content=content, limit=limit)
            location = result.headers.get("location") if result.status in _REDIRECTS else None
            if location is None:
                return result
            if hop == self.max_redirects:
                break
            target = normalise_url(urljoin(url, location))
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme == "http":
                raise FetchError(
                    f"refused to fetch {urlsplit(target).hostname}: a redirect from https to http "
                    "(credentials and data would travel unencrypted)"
                )
            if result.status == 303 or (result.status in (301, 302) and method == "POST"):
                method, content = "GET", None
            url = target
        if self.max_redirects == 0:
            raise FetchError(f"the endpoint answered {result.status} (a redirect); redirects are not followed")
        raise FetchError(f"more than {self.max_redirects} redirects")

    async def send(
        self, url: str, *, method: str, headers: Mapping[str, str], content: bytes | None, limit: int
    ) -> FetchResult:
        """One exchange with `url`, which follows no redirect: the host is resolved once and
        checked (`_resolve`), the connection goes to that address with the original Host header and
        TLS name, and the body is capped at `limit` bytes (a redirect's body is not read).

        This is the hook a subclass overrides to exchange on another HTTP stack (the webhooks
        dispatcher's aiohttp); the redirect and credential rules of `fetch` stay the base's."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ip = await self._resolve(host, port)
        ip_host = f"[{ip}]" if ":" in ip else ip
        pinned = urlunsplit((parts.scheme, f"{ip_host}:{port}", parts.path or "/", parts.query, ""))
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        request = self._client.build_request(
            method,
            pinned,
            headers={**headers, "Host": host_header},
            content=content,
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise FetchError(f"could not fetch {host}: {type(exc).__name__}") from exc
        try:
            if response.status_code in _REDIRECTS and "location" in response.headers:
                return FetchResult(response.status_code, response.headers, b"", url)
            body = bytearray()
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise FetchError(f"the response is larger than the {limit:,} byte limit")
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > limit:
                    raise FetchError(f"the response is larger than the {limit:,} byte limit")
            return FetchResult(response.status_code, response.headers, bytes(body), url)
        except httpx.HTTPError as exc:
            raise FetchError(f"could not read the answer of {host}: {type(exc).__name__}") from exc
        finally:
            await response.aclose()
