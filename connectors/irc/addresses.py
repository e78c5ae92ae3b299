"""Source addresses of puppets: one IPv6 address per Matrix user inside a network's
``bind_prefix``.

The host bits are a keyed BLAKE2b hash of the Matrix user id, so a user keeps their address
across restarts and releases (the hash is part of the format: tests pin its values) and
networks can ban or allow one Matrix user by address. ``bind_key`` keys the hash so that
outsiders cannot tell which user an address belongs to by hashing candidate ids.
"""

from __future__ import annotations

import hashlib
import ipaddress

DEFAULT_KEY = "mimi-bridge irc bind_prefix"
MAX_PREFIXLEN = 120  # at least 8 host bits, else users would share addresses all the time


def parse_prefix(text: str) -> ipaddress.IPv6Network:
    """An IPv6 prefix such as ``2001:db8:1::/64``; raises ValueError saying what is wrong."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"{text!r} is not an IPv6 prefix such as 2001:db8:1::/64") from e
    if not isinstance(net, ipaddress.IPv6Network):
        raise ValueError(f"{text!r} is IPv4; a prefix of IPv6 addresses is needed")
    if "/" not in text:
        raise ValueError(f"{text!r} has no prefix length (such as /64)")
    if net.prefixlen > MAX_PREFIXLEN:
        raise ValueError(f"/{net.prefixlen} is too small; at most /{MAX_PREFIXLEN}")
    if ipaddress.ip_interface(text).ip != net.network_address:
        raise ValueError(f"{text!r} has host bits set; the prefix is {net}")
    return net


def user_address(prefix: ipaddress.IPv6Network, user_id: str, key: str = "") -> str:
    """The address in ``prefix`` of the Matrix user ``user_id``."""
    secret = (key or DEFAULT_KEY).encode()
    if len(secret) > 64:  # BLAKE2b keys are at most 64 bytes
        secret = hashlib.blake2b(secret).digest()
    digest = hashlib.blake2b(user_id.encode(), key=secret, digest_size=16).digest()
    host_bits = 128 - prefix.prefixlen
    host = int.from_bytes(digest, "big") & ((1 << host_bits) - 1)
    if host == 0:
        host = 1  # the all-zero host is the subnet-router anycast address, no one's own
    return str(ipaddress.IPv6Address(int(prefix.network_address) | host))
