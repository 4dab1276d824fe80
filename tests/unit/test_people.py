"""Who a person is for an app key's per-person limits (chalicelib/domain/people.py)."""
import pytest

from chalicelib.domain import people


def test_a_customer_is_their_issuer_and_subject():
    ann = people.customer("https://cognito-idp.us-east-1.amazonaws.com/pool-1", "ann")
    assert ann.startswith("customer:") and ann == people.customer("https://cognito-idp.us-east-1.amazonaws.com/pool-1",
                                                                  "ann")
    assert ann != people.customer("https://cognito-idp.us-east-1.amazonaws.com/pool-2", "ann")
    assert people.customer("a|b", "c") != people.customer("a", "b|c")


@pytest.mark.parametrize("source_ip, person", [
    ("203.0.113.7", "address:203.0.113.7"),
    (" 203.0.113.7 ", "address:203.0.113.7"),
    ("::ffff:203.0.113.7", "address:203.0.113.7"),  # the same IPv4 caller, written as IPv6
    # One IPv6 subscriber's /64: a new address per request is still the same person.
    ("2001:db8:1:2:aaaa::1", "address:2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "address:2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "address:2001:db8:1:3::/64"),
    ("", "address:unknown"), (None, "address:unknown"), ("not an address", "address:unknown"),
    ("203.0.113.7, 10.0.0.1", "address:unknown"),
])
def test_elsewhere_a_person_is_their_address_or_ipv6_network(source_ip, person):
    assert people.address(source_ip) == person
