"""Which IP addresses a user-given URL may reach: the address rule of the guarded client
(`calmesh_common.guarded`), free of I/O so that a domain can use it (a webhook endpoint given as an
IP literal is refused at once).
"""

from __future__ import annotations

import ipaddress

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    packed = addr.packed
    if packed[:12] == bytes(12) and packed[12:] != bytes(4):  # IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed[12:])
    return None


def address_refusal(ip: str) -> str | None:
    """Why `ip` may not be fetched from, or None when it is a public address."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_v4(addr)
        if inner is not None:
            reason = address_refusal(str(inner))
            return f"{reason} (inside IPv6 {ip})" if reason else None
    if addr in _METADATA:
        return f"{ip} is a cloud metadata address"
    if addr.is_loopback:
        return f"{ip} is a loopback address"
    if addr.is_link_local:
        return f"{ip} is a link-local address"
    if addr.version == 4 and addr in _SHARED:
        return f"{ip} is a shared (carrier-grade NAT) address"
    if addr.is_private:
        return f"{ip} is a private address"
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified or not addr.is_global:
        return f"{ip} is not a public address"
    return None
