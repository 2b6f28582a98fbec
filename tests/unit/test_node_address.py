"""The one check of node agent addresses (API, CLI, actors)."""

from __future__ import annotations

import pytest

from fleetwave.agent.protocol import AgentAddress
from fleetwave.store.address import InvalidAddress, check_agent_address, check_agent_host
from tests.hostile import HOSTILE_ADDRESSES, hostile_row


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("2001:DB8::0:9", "2001:db8::9"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ],
)
def test_ip_literals_are_accepted_in_canonical_form(given: str, canonical: str) -> None:
    assert check_agent_host(given) == canonical
    assert AgentAddress(given, 8443).host == canonical


@pytest.mark.parametrize("name", list(HOSTILE_ADDRESSES))
def test_every_hostile_row_is_refused_saying_why(name: str) -> None:
    main_ip, port, words = hostile_row(name, "127.0.0.9")
    with pytest.raises(InvalidAddress) as refused:
        check_agent_address(main_ip, port)
    assert words in str(refused.value)
    with pytest.raises(ValueError, match=r"address|port"):
        AgentAddress(main_ip, port)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["127.0.0.1\x00", "\ud800", "x" * 100_000, 5, b"127.0.0.1", "127.0.0.010"]
)
def test_odd_text_is_refused_in_a_short_printable_message(value: object) -> None:
    with pytest.raises(InvalidAddress) as refused:
        check_agent_host(value)
    message = str(refused.value)
    assert len(message) < 160
    assert message.isprintable()
    message.encode("utf-8")  # no lone surrogate: PostgreSQL stores it


def test_a_huge_port_is_not_printed_in_full() -> None:
    with pytest.raises(InvalidAddress, match="more than 12 digits"):
        check_agent_address("127.0.0.2", 10**5000)


def test_url_of_an_ipv6_agent_brackets_the_address() -> None:
    assert AgentAddress("2001:db8::9", 9443).base_url == "https://[2001:db8::9]:9443"
