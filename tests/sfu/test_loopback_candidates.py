"""A loopback-only SFU drops remote candidates it cannot reach (sfu.negotiation)."""

from __future__ import annotations

import pytest

from sfu.negotiation import candidate_reachable, drop_unreachable_candidates, loopback_only

OFFER = (
    "v=0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:1 1 udp 2113937151 192.0.2.2 46078 typ host generation 0\r\n"
    "a=candidate:2 1 udp 2113942271 fd00::2 51777 typ host generation 0\r\n"
    "a=candidate:3 1 udp 2113939711 127.0.0.1 40000 typ host generation 0\r\n"
    "a=candidate:4 1 udp 2113939711 6d1c1d9f-0a3b.local 40001 typ host generation 0\r\n"
    "a=candidate:5 1 udp 2113939711 ::1 40002 typ host generation 0\r\n"
    "a=end-of-candidates\r\n"
    "a=mid:0\r\n"
)


@pytest.mark.parametrize(
    ("gather", "expected"),
    [
        (["127.0.0.1"], True),
        (["127.0.0.1", "::1"], True),
        (["127.0.0.1", "192.0.2.2"], False),
        ([], False),
        (None, False),
    ],
)
def test_loopback_only(gather, expected) -> None:
    assert loopback_only(gather) is expected


def test_loopback_node_keeps_only_loopback_candidates() -> None:
    out = drop_unreachable_candidates(OFFER, ["127.0.0.1"])
    candidates = [ln for ln in out.split("\r\n") if ln.startswith("a=candidate:")]
    assert [c.split()[4] for c in candidates] == ["127.0.0.1", "::1"]
    # The peer's checks to us still become peer-reflexive candidates: keep expecting them.
    assert "a=end-of-candidates" not in out
    assert out.startswith("v=0\r\nm=video") and out.endswith("a=mid:0\r\n")


def test_other_nodes_keep_the_offer_unchanged() -> None:
    assert drop_unreachable_candidates(OFFER, ["192.0.2.2"]) == OFFER
    assert drop_unreachable_candidates(OFFER, None) == OFFER
    loopback_offer = OFFER.replace("192.0.2.2", "127.0.0.2").replace("fd00::2", "::1")
    loopback_offer = "\r\n".join(ln for ln in loopback_offer.split("\r\n") if ".local" not in ln)
    assert drop_unreachable_candidates(loopback_offer, ["127.0.0.1"]) == loopback_offer


@pytest.mark.parametrize(
    ("address", "gather", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1"], True),
        ("192.0.2.2", ["127.0.0.1"], False),
        ("x.local", ["127.0.0.1"], False),
        ("192.0.2.2", ["192.0.2.2"], True),
        ("192.0.2.2", None, True),
    ],
)
def test_trickled_candidate_reachable(address, gather, expected) -> None:
    assert candidate_reachable(address, gather) is expected
