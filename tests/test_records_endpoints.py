"""Endpoints in NodeCerts (anonmail/records/certs.py): private addresses only on test networks,
unspecified and multicast never, only canonical IP literals (no names), at most four; parsing
`host:port` text, with parse errors as user errors; the /24 and /48 subnets that bound a
bucket's diversity.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from signedrecords import NOW, PUBLIC, TEST, node_cert

from anonmail import wire
from anonmail.errors import RemoteProtocolError, UserError
from anonmail.records.certs import Endpoint, NodeCert
from anonmail.records.params import NetworkParams


def _with_endpoint(host: str, params: NetworkParams) -> NodeCert:
    return node_cert(params, endpoints=(Endpoint(host, 7000),))


PRIVATE_HOSTS = ["127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1",
                 "169.254.169.254", "100.64.0.1", "::1", "fe80::1", "fc00::1", "fd12:3456::1",
                 str(ipaddress.ip_address("::ffff:127.0.0.1")), "192.0.2.1", "203.0.113.7",
                 "2001:db8::1", "198.18.0.1"]
NEVER_HOSTS = ["0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1"]
NOT_CANONICAL = ["::0001", "0:0:0:0:0:0:0:1", "2001:DB8::1", "2a00:1450:4001:0::1",
                 "localhost", "example.com", "1.2.3", "01.2.3.4", "1.2.3.4 ", "[::1]"]


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_private_endpoints_only_on_test_networks(host: str) -> None:
    with pytest.raises(RemoteProtocolError):
        _with_endpoint(host, PUBLIC).verify(PUBLIC, NOW)
    _with_endpoint(host, TEST).verify(TEST, NOW)


@pytest.mark.parametrize("host", NEVER_HOSTS)
def test_unspecified_and_multicast_never(host: str) -> None:
    for params in (PUBLIC, TEST):
        with pytest.raises(RemoteProtocolError):
            _with_endpoint(host, params).verify(params, NOW)


@pytest.mark.parametrize("host", NOT_CANONICAL)
def test_endpoint_must_be_a_canonical_ip_literal(host: str) -> None:
    """No names (a peer cannot make us resolve anything) and one spelling per address."""
    for params in (PUBLIC, TEST):
        with pytest.raises(RemoteProtocolError):
            _with_endpoint(host, params).verify(params, NOW)


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "2a00:1450:4001::1", "2606:4700::1111"])
def test_public_endpoints_accepted(host: str) -> None:
    _with_endpoint(host, PUBLIC).verify(PUBLIC, NOW)


def test_at_most_four_endpoints() -> None:
    eps = tuple(Endpoint("8.8.8.8", 1000 + i) for i in range(5))
    encoded = wire.encode(node_cert(PUBLIC, endpoints=eps))
    with pytest.raises(RemoteProtocolError):
        wire.decode(encoded, NodeCert)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.2.3.4:7000", Endpoint("1.2.3.4", 7000)), (" 8.8.8.8:1 ", Endpoint("8.8.8.8", 1)),
     ("[::1]:7000", Endpoint("::1", 7000)),
     ("[2001:DB8:0::1]:65535", Endpoint("2001:db8::1", 65535)),
     ("[::ffff:1.2.3.4]:9", Endpoint(str(ipaddress.ip_address("::ffff:1.2.3.4")), 9))],
)
def test_endpoint_parse(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "1.2.3.4", "1.2.3.4:", ":7000", "localhost:7000", "example.com:80", "1.2.3.4:0",
     "1.2.3.4:65536", "1.2.3.4:-1", "::1:7000", "[::1]", "[::1]7000", "256.1.1.1:7",
     "01.2.3.4:7", "1.2.3:7", "[fe80::1%eth0]:7", "1.2.3.4:7000:1", "1.2.3.4:+7",
     "1.2.3.4:\u0667\u0660\u0660\u0660", "1.2.3.4:" + "9" * 5000, "[" + "1" * 5000 + "]:1",
     "1.2.3.4:7\n8"],
    ids=lambda t: t[:24],
)
def test_endpoint_parse_errors_are_user_errors(text: str) -> None:
    with pytest.raises(UserError):
        Endpoint.parse(text)


@given(st.ip_addresses(), st.integers(1, 65535))
def test_endpoint_text_roundtrip(ip: Any, port: int) -> None:
    ep = Endpoint(str(ip), port)
    assert Endpoint.parse(str(ep)) == ep


@pytest.mark.parametrize(
    ("host", "subnet"),
    [("1.2.3.4", "1.2.3.0/24"), ("1.2.3.250", "1.2.3.0/24"), ("1.2.4.4", "1.2.4.0/24"),
     ("2a00:1450:4001:81c::200e", "2a00:1450:4001::/48"),
     ("2a00:1450:4002::1", "2a00:1450:4002::/48")],
)
def test_endpoint_subnet_is_the_diversity_unit(host: str, subnet: str) -> None:
    assert Endpoint(host, 1).subnet() == subnet
