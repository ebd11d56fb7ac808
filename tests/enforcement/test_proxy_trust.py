"""Which peers may speak for a request: the networks decide, whatever was asked before."""

from __future__ import annotations

from ipaddress import ip_network

from trustplane.enforcement.credentials import ProxyTrust


def test_trust_follows_the_networks_and_answers_are_remembered_within_a_bound() -> None:
    trust = ProxyTrust([ip_network("10.0.0.0/8"), ip_network("::1/128")])
    for _ in range(2):  # the second round is answered from memory
        assert trust.trusts("10.1.2.3")
        assert trust.trusts("::1")
        assert not trust.trusts("11.0.0.1")
        assert not trust.trusts("not-an-address")
        assert not trust.trusts("")
        assert not trust.trusts(None)
    for i in range(ProxyTrust.CACHE_SIZE * 2):
        assert not trust.trusts(f"192.0.2.{i % 256}x{i}")
    assert len(trust._answers) <= ProxyTrust.CACHE_SIZE
    assert trust.trusts("10.1.2.3") and not trust.trusts("11.0.0.1")


def test_no_networks_trusts_nobody() -> None:
    assert not ProxyTrust([]).trusts("127.0.0.1")
