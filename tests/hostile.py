"""Hostile inputs shared by the tests of every boundary that meets them.

``HOSTILE_ADDRESSES``: node rows another program may write (main_ip, agent_port), each with
words its refusal must contain. ``NEAR`` in a main_ip stands for a live agent's address: a
row that is almost that address must still never reach that agent.
"""

from __future__ import annotations

NEAR = "{near}"

HOSTILE_ADDRESSES: dict[str, tuple[str | None, int | None, str]] = {
    "empty": ("", 8443, "address is empty"),
    "only-spaces": ("   ", 8443, "has spaces in it"),
    "leading-space": (" " + NEAR, 8443, "has spaces in it"),
    "trailing-newline": (NEAR + "\n", 8443, "has spaces in it"),
    "host-and-port": (NEAR + ":8443", 8443, "brackets or a port?"),
    "hostname": ("localhost", 8443, "a host name? names are not resolved"),
    "dotted-hostname": ("edge-1.example.net", 8443, "a host name?"),
    "bracketed-ipv6": ("[::1]", 8443, "brackets or a port?"),
    "ipv6-with-port": ("[::1]:8443", 8443, "brackets or a port?"),
    "ipv6-zone": ("fe80::1%lo", 8443, "has a zone index"),
    "unspecified": ("0.0.0.0", 8443, "is not the address of one host"),
    "url": ("https://" + NEAR + "/", 8443, "(a URL? give the address alone)"),
    "userinfo": ("x@" + NEAR, 8443, "(a URL? give the address alone)"),
    "port-0": (NEAR, 0, "port must be from 1 to 65535, got 0"),
    "port-70000": (NEAR, 70000, "port must be from 1 to 65535, got 70000"),
    "negative-port": (NEAR, -1, "port must be from 1 to 65535, got -1"),
    "null-address": (None, 8443, "address is missing (null)"),
    "null-port": (NEAR, None, "port is missing (null)"),
}

SCHEMA_BARRED = frozenset({"null-address", "null-port", "port-0", "port-70000", "negative-port"})
"""Values fleetwave's own schema refuses (NOT NULL, CHECK): a database whose schema another
program changed (the original's MySQL table had neither) can still hold them."""


def hostile_row(name: str, near: str) -> tuple[str | None, int | None, str]:
    main_ip, port, words = HOSTILE_ADDRESSES[name]
    return (None if main_ip is None else main_ip.replace(NEAR, near)), port, words
