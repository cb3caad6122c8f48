"""Client addresses: the peer or a trusted proxy's client, network checks, throttle keys."""

from __future__ import annotations

import hashlib
import ipaddress

from ._policy import IPNetwork
from ._request import AuthRequest

__all__ = ["client_address", "in_networks", "throttle_key"]


def client_address(request: AuthRequest, proxies: tuple[IPNetwork, ...]) -> str:
    """Return the client's address: the peer, or from ``X-Forwarded-For``.

    ``X-Forwarded-For`` is believed only when the peer is in ``proxies``; then the
    right-most hop that is not one of them is the client.
    """
    peer = request.client_ip
    if not proxies or not in_networks(peer, proxies):
        return peer
    hops = [
        hop.strip()
        for value in request.header_values("x-forwarded-for")
        for hop in value.split(",")
    ]
    client = peer
    for hop in reversed(hops):
        client = _without_port(hop)
        if not in_networks(client, proxies):
            break
    return client


def in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Return whether ``address`` is in one of ``networks`` (IPv4-mapped forms alike)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if any(ip in network for network in networks):
        return True
    # An IPv4-mapped address (::ffff:203.0.113.5) also matches as its IPv4 address, and
    # an IPv4 address as its mapped form ("::ffff:203.0.113.0/120" is a way to write it).
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        return mapped is not None and any(mapped in network for network in networks)
    alias = ipaddress.IPv6Address(f"::ffff:{ip}")
    return any(alias in network for network in networks)


def throttle_key(address: str) -> str:
    """The throttle's key for a client address: an IPv6 client counts by its /64.

    One IPv6 host is usually given a whole /64; counted per address, it would have
    2**64 budgets of guesses.
    """
    if len(address) > _LONGEST_ADDRESS:
        # No address (an X-Forwarded-For hop is any text): a key of bounded size, so a
        # store's ledger never refuses it, and the same text still counts as one client.
        digest = hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()
        return f"text:{digest[:32]}"
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if any(ip in prefix for prefix in _EMBEDDING_IPV4):
        # A translator's prefix holds a whole IPv4 population: each by its own address.
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


# The longest text of an address: IPv6 with an IPv4 tail and a zone, with room to spare.
_LONGEST_ADDRESS = 64

# IPv6 prefixes whose last 32 bits are an IPv4 client: NAT64's well-known prefix
# (RFC 6052) and the old IPv4-compatible addresses (::a.b.c.d).
_EMBEDDING_IPV4 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))


def _without_port(hop: str) -> str:
    """An ``X-Forwarded-For`` hop without a port: ``203.0.113.5:4711``, ``[2001:db8::1]:4711``."""
    if hop.startswith("["):
        end = hop.find("]")
        return hop[1:end] if end > 0 else hop
    if hop.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has two or more
        return hop.split(":", 1)[0]
    return hop
