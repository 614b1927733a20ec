"""The beacon validator (:mod:`community.beacons`), table-driven, and ``POST /api/beacons``
on the platform app: bad batches are rejected whole and nothing is stored, the size cap,
the per-address rate limit, and the CSRF exemption that keeps a cookie's user."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from common.ratelimit import TokenBuckets
from community.analytics import analytics_of
from community.api.analytics import BEACONS_PER_ADDRESS, BUCKETS
from community.beacons import MAX_BATCH, Beacon, BeaconBatch
from community.models import QoeBeacon
from community.tokens import tokens_of
from tests.community.platform_app import community_of, make_user

GOOD: dict[str, Any] = {
    "session": "s3ss10n_Ab-9",
    "channel": "alice",
    "tier": "llhls",
    "event": "heartbeat",
}


def beacon(**fields: Any) -> dict[str, Any]:
    out = dict(GOOD)
    for name, value in fields.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


DROP = object()


def validate(data: dict[str, Any]) -> Beacon:
    """As ``POST /api/beacons`` does: strict JSON validation."""
    return Beacon.model_validate_json(json.dumps(data), strict=True)


# (field, value) pairs that are accepted: each bound itself and a value inside.
ACCEPTED = [
    ("session", "a" * 8),
    ("session", "Z" * 64),
    ("session", "ab_cd-EF09"),
    ("channel", "a"),
    ("channel", "x" * 64),
    ("channel", "Room_1-b"),
    ("tier", "webrtc"),
    ("tier", "llhls"),
    *[("event", e) for e in ("join", "heartbeat", "stall", "switch", "error", "end")],
    ("join_ms", 0),
    ("join_ms", 120000),
    ("join_ms", 812.5),
    ("latency_ms", 0),
    ("latency_ms", 120000),
    ("latency_ms", 35.25),
    ("stalls", 0),
    ("stalls", 100000),
    ("switches", 0),
    ("switches", 100000),
    ("height", 0),
    ("height", 4320),
    ("height", 720),
    ("error", ""),
    ("error", "e" * 200),
    ("error", "MEDIA_ERR_DECODE: bufferAppendError"),
    ("join_ms", None),
    ("height", None),
]

# (field, value) pairs that are refused: just past each bound, wrong types, absurd values.
REFUSED = [
    ("session", "a" * 7),
    ("session", "a" * 65),
    ("session", "has space1"),
    ("session", "semi;colon"),
    ("session", ""),
    ("session", 12345678),
    ("session", DROP),
    ("channel", ""),
    ("channel", "x" * 65),
    ("channel", "-leading"),
    ("channel", "../etc"),
    ("channel", "a/b"),
    ("channel", DROP),
    ("tier", "dash"),
    ("tier", "WEBRTC"),
    ("tier", DROP),
    ("event", "play"),
    ("event", ""),
    ("event", DROP),
    ("join_ms", -1),
    ("join_ms", 120000.5),
    ("join_ms", 1e12),
    ("join_ms", "800"),
    ("join_ms", True),
    ("latency_ms", -0.1),
    ("latency_ms", 120001),
    ("latency_ms", [1]),
    ("stalls", -1),
    ("stalls", 100001),
    ("stalls", 1.5),
    ("stalls", "3"),
    ("stalls", False),
    ("stall_ms", -1),
    ("stall_ms", 86400001),
    ("switches", -1),
    ("switches", 100001),
    ("switches", 2.0),
    ("height", -1),
    ("height", 4321),
    ("height", 720.5),
    ("height", 1e9),
    ("error", "e" * 201),
    ("error", "line\nbreak"),
    ("error", "nul\x00"),
    ("error", 42),
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED)
def test_accepts_each_field_within_its_bounds(field: str, value: Any) -> None:
    parsed = validate(beacon(**{field: value}))
    assert getattr(parsed, field) == value


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_refuses_each_field_outside_its_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        validate(beacon(**{field: value}))


@pytest.mark.parametrize(
    "extra", [{"user_id": "x"}, {"stream_id": "abc"}, {"__proto__": {}}, {"Tier": "llhls"}]
)
def test_refuses_unknown_fields(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="extra"):
        validate({**GOOD, **extra})


@pytest.mark.parametrize(
    ("stalls", "stall_ms", "ok"),
    [
        (0, 0, True),
        (1, 0, True),
        (3, 4500.0, True),
        (None, 100, True),
        (0, 1, False),
        (0, 86400000, False),
    ],
)
def test_stall_time_needs_stalls(stalls: int | None, stall_ms: float, ok: bool) -> None:
    data = beacon(stalls=stalls, stall_ms=stall_ms)
    if ok:
        assert validate(data).stall_ms == stall_ms
    else:
        with pytest.raises(ValidationError, match="stall_ms"):
            validate(data)


@pytest.mark.parametrize(
    ("count", "ok"), [(0, False), (1, True), (MAX_BATCH, True), (MAX_BATCH + 1, False)]
)
def test_batch_size(count: int, ok: bool) -> None:
    data = json.dumps({"beacons": [GOOD] * count})
    if ok:
        assert len(BeaconBatch.model_validate_json(data, strict=True).beacons) == count
    else:
        with pytest.raises(ValidationError):
            BeaconBatch.model_validate_json(data, strict=True)


def test_batch_refuses_extra_members() -> None:
    with pytest.raises(ValidationError):
        BeaconBatch.model_validate_json(json.dumps({"beacons": [GOOD], "sent_at": 1}), strict=True)


# ---------------------------------------------------------------------- the endpoint
async def stored(client: TestClient) -> list[QoeBeacon]:
    await analytics_of(client.server.app).beacons.flush()
    async with community_of(client).db.session() as session:
        return list((await session.execute(select(QoeBeacon).order_by(QoeBeacon.id))).scalars())


async def test_valid_batch_is_accepted_and_stored(platform_client: TestClient) -> None:
    await make_user(community_of(platform_client), "alice")
    batch = [
        beacon(event="join", join_ms=640.0, latency_ms=2100.0, height=720),
        beacon(event="stall", stalls=1, stall_ms=850.0, latency_ms=2300.0),
    ]
    response = await platform_client.post("/api/beacons", json={"beacons": batch})
    assert response.status == 202, await response.text()
    assert await response.json() == {"accepted": 2}
    rows = await stored(platform_client)
    assert [(r.event, r.join_ms, r.stalls, r.stall_ms, r.height, r.user_id) for r in rows] == [
        ("join", 640.0, None, None, 720, None),
        ("stall", None, 1, 850.0, None, None),
    ]
    assert (
        rows[0].channel_id == rows[1].channel_id and rows[0].stream_id is None
    )  # not live: no stream


@pytest.mark.parametrize(
    "bad",
    [
        {"join_ms": 999999},
        {"latency_ms": -5},
        {"height": 100000},
        {"stalls": 10**9},
        {"bogus": 1},
        {"tier": "rtmp"},
        {"error": "x" * 201},
    ],
)
async def test_one_absurd_beacon_rejects_the_batch(
    platform_client: TestClient, bad: dict[str, Any]
) -> None:
    await make_user(community_of(platform_client), "alice")
    batch = [beacon(event="join", join_ms=500.0), {**GOOD, **bad}, beacon(event="end")]
    response = await platform_client.post("/api/beacons", json={"beacons": batch})
    assert response.status == 422
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["errors"][0]["loc"][:2] == ["beacons", "1"]
    assert await stored(platform_client) == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"beacons": []}, 422),
        ({"beacons": [GOOD] * (MAX_BATCH + 1)}, 422),
        ({}, 422),
        ([GOOD], 422),
        ({"beacons": "x"}, 422),
    ],
)
async def test_batch_shape(platform_client: TestClient, body: Any, status: int) -> None:
    response = await platform_client.post("/api/beacons", json=body)
    assert response.status == status
    assert await stored(platform_client) == []


async def test_malformed_and_oversized_bodies(platform_client: TestClient) -> None:
    response = await platform_client.post(
        "/api/beacons", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    # Nested deeper than Python's parser goes (RecursionError): a 400 too, not a 500.
    response = await platform_client.post(
        "/api/beacons", data=b"[" * 60_000, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400 and (await response.json())["detail"] == "the body is not valid UTF-8 JSON"
    response = await platform_client.post(
        "/api/beacons",
        data=b'{"beacons":[{"session":NaN}]}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 422
    big = json.dumps({"beacons": [beacon(error="e" * 200)] * 50, "pad": "x" * 70_000})
    response = await platform_client.post(
        "/api/beacons", data=big, headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    response = await platform_client.post(
        "/api/beacons", data=json.dumps({"beacons": [GOOD]}), headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415
    assert await stored(platform_client) == []


async def test_unknown_channel_is_accepted_but_not_stored(platform_client: TestClient) -> None:
    response = await platform_client.post(
        "/api/beacons", json={"beacons": [beacon(channel="nobody")]}
    )
    assert response.status == 202  # answered without a database lookup
    assert await stored(platform_client) == []


async def test_rate_limit_per_client_address(platform_client: TestClient) -> None:
    """The shipped numbers, on a stopped clock: the burst passes, the next request is
    429 with Retry-After and stores nothing; a second later the rate's worth passes again."""
    await make_user(community_of(platform_client), "alice")
    burst, rate = BEACONS_PER_ADDRESS
    now = [1000.0]
    community_of(platform_client).services[BUCKETS] = TokenBuckets(
        rate, burst, clock=lambda: now[0]
    )
    for _ in range(burst):
        response = await platform_client.post("/api/beacons", json={"beacons": [GOOD]})
        assert response.status == 202
    response = await platform_client.post("/api/beacons", json={"beacons": [GOOD] * 3})
    assert response.status == 429
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    now[0] += 1.0
    statuses = [
        (await platform_client.post("/api/beacons", json={"beacons": [GOOD]})).status
        for _ in range(int(rate) + 1)
    ]
    assert statuses == [202] * int(rate) + [429]
    assert len(await stored(platform_client)) == burst + int(rate)


async def test_cookie_user_is_kept_without_csrf_header(platform_client: TestClient) -> None:
    """sendBeacon cannot set X-CSRF-Token: the beacon endpoint alone keeps the cookie's
    user without it; an expired or forged cookie makes it anonymous, not refused."""
    community = community_of(platform_client)
    alice = await make_user(community, "alice")
    token, _ = await tokens_of(platform_client.server.app).issue_access(alice)
    cookie = {"Cookie": f"rc_access={token}"}
    response = await platform_client.post("/api/beacons", json={"beacons": [GOOD]}, headers=cookie)
    assert response.status == 202
    response = await platform_client.post(
        "/api/beacons",
        json={"beacons": [beacon(event="end")]},
        headers={"Cookie": "rc_access=forged.token.value"},
    )
    assert response.status == 202
    assert [(r.event, r.user_id) for r in await stored(platform_client)] == [
        ("heartbeat", alice.id),
        ("end", None),
    ]
    # Everywhere else a cookie POST without the header is still refused.
    response = await platform_client.post("/api/streams/start", json={"title": "x"}, headers=cookie)
    assert response.status == 403
