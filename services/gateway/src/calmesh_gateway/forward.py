"""Forwarding to the services with one pooled aiohttp.ClientSession (the gateway's hot path)."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from yarl import URL

from calmesh_common.problems import Problem
from calmesh_common.retryafter import HEADER, retry_after, retry_after_seconds

#: Response headers never passed back: hop-by-hop ones, those the gateway sets itself.
_DROP_RESPONSE = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server",
    b"x-request-id", b"traceparent", b"tracestate", b"proxy-authenticate", b"upgrade", b"trailer",
})
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ServiceUnavailable(Problem):
    def __init__(self, service: str) -> None:
        super().__init__(503, "service_unavailable", f"The {service} service is unavailable; try again shortly.",
                         service=service, headers=retry_after(RETRY_AFTER_SECONDS))


#: Seconds a client should wait before trying again after a 502/503/504 of the gateway.
RETRY_AFTER_SECONDS = 5


class ServiceTimeout(Problem):
    def __init__(self, service: str, seconds: float) -> None:
        super().__init__(504, "gateway_timeout", f"The {service} service did not answer within {seconds:g} s.",
                         service=service, headers=retry_after(RETRY_AFTER_SECONDS))


class Forwarder:
    """Sends a request on to a service at the same path and returns (status, headers, body)."""

    def __init__(self, service_urls: Mapping[str, str], timeout: float = 30.0) -> None:
        self.bases = {name: url.rstrip("/") for name, url in service_urls.items() if url}
        self.timeout = timeout
        connector = aiohttp.TCPConnector(
            limit=512, limit_per_host=256, ttl_dns_cache=300,
            # Below uvicorn's 5 s keep-alive, so we never reuse a connection the service is closing.
            keepalive_timeout=3.0,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 3.0)),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def has(self, service: str) -> bool:
        return service in self.bases

    async def forward(
        self, service: str, method: str, raw_path: str, query: str, headers: list[tuple[str, str]], body: bytes,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        base = self.bases.get(service)
        if base is None:
            raise ServiceUnavailable(service)
        url = URL(f"{base}{raw_path}?{query}" if query else f"{base}{raw_path}", encoded=True)
        attempts = 2 if method in _IDEMPOTENT else 1
        for attempt in range(attempts):
            try:
                async with self.session.request(
                    method, url, headers=headers, data=body if body else None, allow_redirects=False,
                ) as resp:
                    payload = await resp.read()
                    out = [(k, v) for k, v in resp.raw_headers if k.lower() not in _DROP_RESPONSE]
                    if resp.status in (502, 503, 504) and not any(k.lower() == b"retry-after" for k, _ in out):
                        # A service that is up but whose dependency is away: tell the client when.
                        out.append((HEADER.encode(), retry_after_seconds(RETRY_AFTER_SECONDS).encode()))
                    return resp.status, out, payload
            except aiohttp.ClientConnectorError:
                raise ServiceUnavailable(service) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # A pooled connection the service had just closed: once more on a fresh one.
                if attempt + 1 < attempts:
                    continue
                raise ServiceUnavailable(service) from None
            except TimeoutError:
                raise ServiceTimeout(service, self.timeout) from None
            except aiohttp.ClientError:
                raise Problem(502, "bad_gateway", f"The {service} service sent an answer that could not be read.",
                              service=service, headers=retry_after(RETRY_AFTER_SECONDS)) from None
        raise ServiceUnavailable(service)

    async def get_json_status(self, url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
        """A small GET for health checks and schema fetches."""
        async with self.session.get(url, headers=dict(headers), timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.read()

    async def close(self) -> None:
        await self.session.close()
