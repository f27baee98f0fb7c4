"""Who the caller is, for the access line: its address (through trusted proxies) and its trace context.

Pure functions, for both front doors.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: X-Forwarded-For hops looked at, from the right: a longer list is a caller padding it
MAX_HOPS = 16
#: W3C trace context, version 00: version-traceid-parentid-flags, lower-case hex
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def trusted_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: tuple[Network, ...]) -> bool:
    return any(address in network for network in trusted)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str | None:
    """The caller's address: the peer's, unless the peer is a trusted proxy.

    Then it is the rightmost ``X-Forwarded-For`` hop that is not a trusted proxy itself
    (the left part of the list is the caller's to write, so only the hops the trusted
    proxies appended are believed). A hop that is not an address ends the walk at the
    last address believed.
    """
    if peer is None or not trusted or not forwarded_for:
        return peer
    believed = _address(peer)
    if believed is None or not _trusted(believed, trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")[-MAX_HOPS:]):
        address = _address(hop)
        if address is None:
            break
        believed = address
        if not _trusted(address, trusted):
            break
    return str(believed)


def trusted_peer(peer: str | None, trusted: tuple[Network, ...]) -> bool:
    """Whether the connection's peer may name the trace a request belongs to: loopback (a sidecar's neighbour, the
    local stack) or a trusted proxy, as for ``X-Forwarded-For``; anyone else's ``traceparent`` starts a new trace."""
    address = _address(peer) if peer is not None else None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and (address.is_loopback or _trusted(address, trusted))


def traceparent(value: str | None) -> str | None:
    """A caller's W3C ``traceparent`` if it is a valid one (version 00 or later, ids not all zeros), else None."""
    if value is None or len(value) > 128:
        return None
    value = value.strip()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, _ = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if version == "00" and len(value) != 55:
        return None
    return value[:55]
