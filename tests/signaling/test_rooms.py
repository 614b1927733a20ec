"""`signaling.rooms` as a unit: room creation and stream keys (`RoomRegistry.check_key`),
the per-address failure counter (`record_failure`/`blocked`), and how a `Room` adds up the
node reports it gets (`Room.apply_state`, `Room.forget_node`)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from signaling import rooms as rooms_module
from signaling.rooms import KeyCheck, Room, RoomRegistry, new_stream_key

KEY_A = "sk_" + "a" * 32
KEY_B = "sk_" + "b" * 32


# --------------------------------------------------------------- rooms and keys
def test_new_stream_keys_are_192_random_bits() -> None:
    keys = {new_stream_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("sk_") and len(key) == 3 + 32  # 24 bytes, base64url


def test_create_returns_the_key_once_and_stores_only_its_digest() -> None:
    registry = RoomRegistry()
    key = registry.create("demo")
    assert key.startswith("sk_")
    room = registry.get("demo")
    assert room is not None
    assert room.key_digest == hashlib.sha256(key.encode()).digest()
    assert key not in repr(room) and key not in repr(vars(room))
    assert registry.create("given", KEY_A) == KEY_A


@pytest.mark.parametrize("name", ["", "-demo", "_demo", "a b", "a/b", "../x", "é", "x" * 65])
def test_create_refuses_names_outside_the_room_rule(name: str) -> None:
    registry = RoomRegistry()
    with pytest.raises(ValueError, match="must match"):
        registry.create(name)
    assert registry.rooms == {}


def test_create_refuses_a_name_with_a_trailing_newline() -> None:
    # ROOM_RE ends in $, which also matches before a final newline: only a full match counts.
    registry = RoomRegistry()
    with pytest.raises(ValueError, match="must match"):
        registry.create("demo\n", KEY_A)
    assert registry.rooms == {}


@pytest.mark.parametrize("name", ["a", "Demo-1", "room_2", "x" * 64])
def test_create_accepts_names_of_the_room_rule(name: str) -> None:
    registry = RoomRegistry()
    registry.create(name, KEY_A)
    assert registry.check_key(name, KEY_A) is KeyCheck.OK


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
    registry = RoomRegistry()
    registry.create("a", KEY_A)
    registry.create("b", KEY_B)
    assert registry.check_key(room, key) is expected


def test_create_again_rekeys_the_room() -> None:
    registry = RoomRegistry()
    registry.create("a", KEY_A)
    record = registry.get("a")
    assert registry.create("a", KEY_B) == KEY_B
    assert registry.get("a") is record  # the same room, its state kept
    assert registry.check_key("a", KEY_A) is KeyCheck.INVALID
    assert registry.check_key("a", KEY_B) is KeyCheck.OK


def test_rotate() -> None:
    registry = RoomRegistry()
    registry.create("a", KEY_A)
    new = registry.rotate("a")
    assert new != KEY_A and new.startswith("sk_")
    assert registry.check_key("a", KEY_A) is KeyCheck.INVALID
    assert registry.check_key("a", new) is KeyCheck.OK
    with pytest.raises(KeyError):
        registry.rotate("nope")
    assert registry.get("nope") is None


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
    room = Room("demo", b"")
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
    room = Room("demo", b"")
    room.apply_state("a", {"live": True, "viewers": 2})
    room.apply_state("b", {"live": True, "viewers": 3, "pipe": True})
    assert room.forget_node(lost) is changed
    assert (room.live, room.node, room.viewers) == (live, node, viewers)


def test_forget_an_origin_without_viewers_still_changes_the_room() -> None:
    room = Room("demo", b"")
    room.apply_state("a", {"live": True, "viewers": 0})
    assert room.forget_node("a") is True
    assert (room.live, room.node, room.viewers) == (False, None, 0)
    assert room.forget_node("a") is False
