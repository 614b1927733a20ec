"""`signaling.rooms` as a unit: the static keys of a bare app (`StaticKeys`), rooms created
when first needed (`RoomRegistry.ensure`/`find`), the per-address failure counter
(`record_failure`/`blocked`), and how a `Room` adds up the node reports it gets
(`Room.apply_state`, `Room.forget_node`)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from signaling import rooms as rooms_module
from signaling.publish_auth import AccessRefused
from signaling.rooms import Room, RoomRegistry
from signaling.static_keys import KeyCheck, StaticKeys, new_stream_key

KEY_A = "sk_" + "a" * 32
KEY_B = "sk_" + "b" * 32


# --------------------------------------------------------------- rooms and keys
def test_new_stream_keys_are_192_random_bits() -> None:
    keys = {new_stream_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("sk_") and len(key) == 3 + 32  # 24 bytes, base64url


def test_create_returns_the_key_once_and_stores_only_its_digest() -> None:
    keys = StaticKeys()
    key = keys.create("demo")
    assert key.startswith("sk_")
    assert keys.digests == {"demo": hashlib.sha256(key.encode()).hexdigest()}
    assert key not in repr(vars(keys))
    assert keys.create("given", KEY_A) == KEY_A


async def test_room_for_key_names_the_keys_room_or_none() -> None:
    keys = StaticKeys()
    keys.create("a", KEY_A)
    other = keys.create("b")
    assert await keys.room_for_key(KEY_A) == "a"
    assert await keys.room_for_key(other) == "b"
    assert await keys.room_for_key("sk_guess") is None


@pytest.mark.parametrize("name", ["", "-demo", "_demo", "a b", "a/b", "../x", "é", "x" * 65, "demo\n"])
def test_create_refuses_names_outside_the_room_rule(name: str) -> None:
    # ROOM_RE ends in $, which also matches before a final newline: only a full match counts.
    keys, registry = StaticKeys(), RoomRegistry()
    with pytest.raises(ValueError, match="must match"):
        keys.create(name)
    with pytest.raises(ValueError, match="must match"):
        registry.ensure(name)
    assert keys.digests == {} and registry.rooms == {}


@pytest.mark.parametrize("name", ["a", "Demo-1", "room_2", "x" * 64])
def test_create_accepts_names_of_the_room_rule(name: str) -> None:
    keys = StaticKeys()
    keys.create(name, KEY_A)
    assert keys.check_key(name, KEY_A) is KeyCheck.OK


@pytest.mark.parametrize(
    ("room", "key", "expected"),
    [
        ("a", KEY_A, KeyCheck.OK),
        ("b", KEY_B, KeyCheck.OK),
        ("a", KEY_B, KeyCheck.WRONG_ROOM),  # a real key, of another room: 403
        ("b", KEY_A, KeyCheck.WRONG_ROOM),
        ("a", "sk_" + "c" * 32, KeyCheck.INVALID),  # nobody's key: 401
        ("a", "", KeyCheck.INVALID),
        ("a", KEY_A.upper(), KeyCheck.INVALID),
        ("nope", KEY_A, KeyCheck.WRONG_ROOM),  # no such room, but the key is room a's
        ("nope", "sk_" + "c" * 32, KeyCheck.INVALID),
    ],
)
def test_check_key(room: str, key: str, expected: KeyCheck) -> None:
    keys = StaticKeys()
    keys.create("a", KEY_A)
    keys.create("b", KEY_B)
    assert keys.check_key(room, key) is expected


@pytest.mark.parametrize(("room", "key", "status", "error"), [
    ("a", KEY_B, 403, "insufficient_scope"),
    ("a", "sk_" + "c" * 32, 401, "invalid_token"),
])
async def test_authorize_refusals_carry_the_rfc_6750_challenge(room: str, key: str, status: int,
                                                                 error: str) -> None:
    keys = StaticKeys()
    keys.create("a", KEY_A)
    keys.create("b", KEY_B)
    grant = await keys.authorize("a", KEY_A)
    assert (grant.room, grant.owner) == ("a", hashlib.sha256(KEY_A.encode()).hexdigest())
    assert await keys.owns(grant.owner, "a", KEY_A) and not await keys.owns(grant.owner, "a", KEY_B)
    with pytest.raises(AccessRefused) as refused:
        await keys.authorize(room, key)
    assert refused.value.status == status
    assert refused.value.challenge == f'Bearer realm="relaycast", error="{error}"'


def test_create_again_rekeys_the_room() -> None:
    keys = StaticKeys()
    keys.create("a", KEY_A)
    assert keys.create("a", KEY_B) == KEY_B
    assert keys.check_key("a", KEY_A) is KeyCheck.INVALID
    assert keys.check_key("a", KEY_B) is KeyCheck.OK


def test_rotate() -> None:
    keys = StaticKeys()
    keys.create("a", KEY_A)
    new = keys.rotate("a")
    assert new != KEY_A and new.startswith("sk_")
    assert keys.check_key("a", KEY_A) is KeyCheck.INVALID
    assert keys.check_key("a", new) is KeyCheck.OK
    with pytest.raises(KeyError):
        keys.rotate("nope")
    assert "nope" not in keys.digests


async def test_rooms_exist_when_the_authority_says_so_and_get_state_when_first_needed() -> None:
    keys = StaticKeys()
    registry = RoomRegistry(authority=keys)
    assert await registry.find("a") is None
    keys.create("a", KEY_A)
    assert registry.get("a") is None  # no state yet
    room = await registry.find("a")
    assert room is not None and (room.live, room.viewers) == (False, 0)
    assert registry.get("a") is room and registry.ensure("a") is room
    assert await registry.find("../x") is None


# ------------------------------------------------------------ failure counter
class Clock:
    """Stands in for the ``time`` module of signaling.rooms (``monotonic()`` in s)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(rooms_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_blocked_after_max_failures_within_the_window(clock: Clock) -> None:
    registry = RoomRegistry(max_failures=3, window_s=60.0)
    for failures in range(3):
        assert not registry.blocked("198.51.100.1"), failures
        registry.record_failure("198.51.100.1")
        clock.now += 1
    assert registry.blocked("198.51.100.1")
    assert not registry.blocked("198.51.100.2")  # per address


def test_failures_leave_the_window_one_by_one(clock: Clock) -> None:
    registry = RoomRegistry(max_failures=3, window_s=60.0)
    for _ in range(3):
        registry.record_failure("c")
        clock.now += 10  # failures at 1000, 1010, 1020
    clock.now = 1059.9
    assert registry.blocked("c")
    clock.now = 1060.0  # the first is 60 s old: out of the window
    assert not registry.blocked("c")
    registry.record_failure("c")  # 1010, 1020, 1060
    assert registry.blocked("c")
    clock.now = 1080.0  # 1010 and 1020 out
    assert not registry.blocked("c")


# --------------------------------------------------------------- node reports
Report = dict[str, object]


@pytest.mark.parametrize(
    ("reports", "live", "node", "viewers", "node_viewers"),
    [
        pytest.param([], False, None, 0, {}, id="new-room"),
        pytest.param([("a", {"live": True, "viewers": 2})], True, "a", 2, {"a": 2}, id="origin-live"),
        pytest.param([("a", {"live": True, "viewers": 2}), ("b", {"live": True, "viewers": 3, "pipe": True})],
                     True, "a", 5, {"a": 2, "b": 3}, id="edge-adds-viewers"),
        pytest.param([("a", {"live": True, "viewers": 2}), ("b", {"live": True, "viewers": 3, "pipe": True}),
                      ("b", {"live": True, "viewers": 0, "pipe": True})],
                     True, "a", 2, {"a": 2}, id="edge-empties"),
        pytest.param([("a", {"live": True, "viewers": 2}), ("a", {"live": False, "viewers": 0, "pipes": 0})],
                     False, None, 0, {}, id="origin-idle-releases"),
        pytest.param([("a", {"live": True, "viewers": 0}), ("a", {"live": False, "viewers": 1})],
                     False, "a", 1, {"a": 1}, id="publisher-gone-viewers-wait"),
        pytest.param([("a", {"live": False, "viewers": 0, "pipes": 1})], False, "a", 0, {},
                     id="origin-with-pipes-only"),
        pytest.param([("a", {"live": True, "viewers": 1}), ("b", {"live": False, "viewers": 0})],
                     True, "a", 1, {"a": 1}, id="idle-report-of-another-node-changes-nothing"),
        pytest.param([("a", {"live": True, "viewers": 1}), ("b", {"live": True, "viewers": 0})],
                     True, "b", 1, {"a": 1}, id="publisher-moved-to-b"),
        pytest.param([("a", {"live": True, "viewers": 2}), ("b", {"viewers": 4, "pipe": True}),
                      ("a", {"live": False, "viewers": 0})],
                     False, None, 4, {"b": 4}, id="origin-ends-edge-viewers-stay"),
    ],
)
def test_apply_state(reports: list[tuple[str, Report]], live: bool, node: str | None, viewers: int,
                     node_viewers: dict[str, int]) -> None:
    room = Room("demo")
    for node_id, state in reports:
        room.apply_state(node_id, state)
    assert (room.live, room.node, room.viewers, room.node_viewers) == (live, node, viewers, node_viewers)
    assert room.to_json() == {"room": "demo", "live": live, "viewers": viewers}


@pytest.mark.parametrize(
    ("lost", "changed", "live", "node", "viewers"),
    [
        ("b", True, True, "a", 2),  # an edge: its viewers no longer count
        ("a", True, False, None, 3),  # the origin: not live, the edge's viewers wait
        ("c", False, True, "a", 5),  # unknown to the room
    ],
)
def test_forget_node(lost: str, changed: bool, live: bool, node: str | None, viewers: int) -> None:
    room = Room("demo")
    room.apply_state("a", {"live": True, "viewers": 2})
    room.apply_state("b", {"live": True, "viewers": 3, "pipe": True})
    assert room.forget_node(lost) is changed
    assert (room.live, room.node, room.viewers) == (live, node, viewers)


def test_forget_an_origin_without_viewers_still_changes_the_room() -> None:
    room = Room("demo")
    room.apply_state("a", {"live": True, "viewers": 0})
    assert room.forget_node("a") is True
    assert (room.live, room.node, room.viewers) == (False, None, 0)
    assert room.forget_node("a") is False
