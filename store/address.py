"""Node agent addresses: the one check for the API, the CLI and the actors.

A node's agent is dialled at exactly its row's address: an IPv4 or IPv6 literal (no name to
resolve, no port, brackets, zone or spaces in it) and a port from 1 to 65535. The API and
``fleetwave nodes add`` refuse anything else; a row another program wrote may still hold
anything, and then only its node fails, with the reason, before any connection is opened.
"""

from __future__ import annotations

import ipaddress

from fleetwave.store.errors import InvalidInput

PORT_MIN = 1
PORT_MAX = 65535
_HOST_MAX = 45
"""The longest IP literal (an IPv6 address with an embedded IPv4 one)."""
_SHOWN_MAX = 60
_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class InvalidAddress(InvalidInput, ValueError):
    """``str()`` names the part (address or port) and what is wrong with it."""


def check_agent_host(value: object) -> str:
    """The canonical text of an agent's IP address, or InvalidAddress saying why not."""
    if value is None:
        raise InvalidAddress("address is missing (null)")
    if not isinstance(value, str):
        raise InvalidAddress(f"address must be text, got {type(value).__name__}")
    if not value:
        raise InvalidAddress("address is empty")
    # Quoted as written (spaces kept), clipped: a row may hold any text.
    shown = repr(value if len(value) <= _SHOWN_MAX else value[: _SHOWN_MAX - 1] + "…")
    if value != value.strip() or any(c.isspace() for c in value):
        raise InvalidAddress(f"address {shown} has spaces in it")
    try:
        ip = ipaddress.ip_address(value) if len(value) <= _HOST_MAX else None
    except ValueError:
        ip = None
    if ip is None:
        raise InvalidAddress(f"address {shown} is not an IPv4 or IPv6 address{_hint(value)}")
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise InvalidAddress(f"address {shown} has a zone index; give the address alone")
    if ip.is_unspecified or ip.is_multicast or ip == _LIMITED_BROADCAST:
        raise InvalidAddress(f"address {shown} is not the address of one host")
    return str(ip)


def check_agent_port(value: object) -> int:
    """An agent's port, 1..65535, or InvalidAddress saying why not."""
    if value is None:
        raise InvalidAddress("port is missing (null)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAddress(f"port must be a whole number, got {type(value).__name__}")
    if not PORT_MIN <= value <= PORT_MAX:
        shown = value if abs(value) < 10**12 else "a number of more than 12 digits"
        raise InvalidAddress(f"port must be from {PORT_MIN} to {PORT_MAX}, got {shown}")
    return value


def check_agent_address(host: object, port: object) -> tuple[str, int]:
    """Both parts checked: (canonical address, port)."""
    return check_agent_host(host), check_agent_port(port)


def _hint(value: str) -> str:
    if "/" in value or "@" in value:
        return " (a URL? give the address alone)"
    if value.startswith("[") or (value.count(":") == 1 and "." in value):
        return " (brackets or a port? give the address alone)"
    if ":" not in value and any(c.isalpha() for c in value):
        return " (a host name? names are not resolved)"
    return ""
