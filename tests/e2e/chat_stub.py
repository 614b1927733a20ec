"""Stand-ins for the chat, moderation and analytics back ends, for the static page tests.

:func:`install` adds to a stub aiohttp app (tests/e2e/test_pages_static.py):

* the pages' Socket.IO namespace ``/`` (a real python-socketio server): ``join`` (ack with
  ``chat``: participant, history, moderator, badges), ``leave``, ``chat`` (numbered per
  room, fanned out as ``chat`` events; the text picks a refusal: ``!slow`` → slow_mode
  (retry_after 7), ``!timeout`` → timed_out (540), ``!ban`` → banned, ``!guest`` →
  guests_off, ``!held`` → held, ``!link`` → links_off);
* ``GET /api/users/me`` for the cookie ``rc_access=moderator`` (user ``demo``, the owner
  of channel ``demo``) or ``rc_access=viewer`` (user ``fan``);
* the REST endpoints of the chat/moderation/analytics contract the pages call, over
  in-memory state in ``app[STATE]`` (requests recorded in ``state["calls"]``), and
  ``POST /api/beacons`` validated with the real :class:`community.beacons.BeaconBatch`.

Everything is answered from memory and is only as clever as the page tests need.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import socketio
from aiohttp import web
from pydantic import ValidationError

from community.beacons import BeaconBatch

STATE: web.AppKey[dict[str, Any]] = web.AppKey("chat_stub_state", dict)

USERS = {
    "moderator": {"id": "u-demo", "username": "demo", "display_name": "Demo", "email": None, "role": "user",
                  "bio": "", "created_at": "2026-01-01T00:00:00Z", "channel": "demo"},
    "viewer": {"id": "u-fan", "username": "fan", "display_name": "Fan", "email": None, "role": "user",
               "bio": "", "created_at": "2026-01-01T00:00:00Z", "channel": "fan"},
}
REFUSALS = {
    "!slow": {"error": "slow_mode", "detail": "slow mode: 10 s between messages", "retry_after": 7},
    "!timeout": {"error": "timed_out", "detail": "timed out", "retry_after": 540},
    "!ban": {"error": "banned", "detail": "banned from this chat"},
    "!guest": {"error": "guests_off", "detail": "guests cannot chat here"},
    "!held": {"error": "held", "detail": "held for review"},
    "!link": {"error": "links_off", "detail": "no links"},
}
SETTINGS = {"slow_mode_s": 0, "followers_only_s": None, "guests_allowed": True, "links_allowed": False}
T0 = "2026-01-03T18:00:00+00:00"


def _user_of(cookies: Any) -> dict[str, Any] | None:
    return USERS.get(cookies.get("rc_access", ""))


def _analytics(stream_id: str) -> dict[str, Any]:
    base = 1_767_463_200  # 2026-01-03T18:00:00Z
    iso = lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))  # noqa: E731
    samples = [{"at": iso(base + 10 * i), "webrtc": min(i, 6) + (i % 3), "llhls": i // 2} for i in range(30)]
    ingest = [{"at": iso(base + 10 * i), "bitrate_bps": 1_400_000 + 30_000 * (i % 5), "fps": 30 - (i % 4 == 0),
               "width": 1280, "height": 720, "keyframe_interval_s": 2.0, "loss": 0.002, "rtt_ms": None,
               "jitter_ms": 4.0} for i in range(30)]
    qoe = {"sessions": 9, "join_ms": {"p50": 620, "p95": 1400}, "latency_ms": {"p50": 310, "p95": 520},
           "stalls": 2, "stall_s": 1.4, "switches": 1, "errors": 0}
    return {
        "stream_id": stream_id, "status": "ended", "started_at": T0, "ended_at": iso(base + 300),
        "viewers": {"samples": samples, "peak": 20, "unique": 31, "watch_time_s": 5400, "average_watch_s": 174},
        "chat": {"total": 57, "per_minute": [{"minute": iso(base + 60 * m), "messages": n}
                                             for m, n in enumerate([3, 9, 17, 12, 16])]},
        "followers_gained": 4,
        "qoe": {"webrtc": qoe, "llhls": {**qoe, "sessions": 14, "join_ms": {"p50": 1900, "p95": 3100},
                                         "latency_ms": {"p50": 1800, "p95": 2600}}},
        "ingest": {"latest": ingest[-1], "samples": ingest},
    }


def install(app: web.Application) -> socketio.AsyncServer:
    """Add the Socket.IO namespace and the REST stand-ins to ``app``; returns the server
    (``await sio.emit("chat", event, room="room:demo")`` pushes an event to the pages)."""
    state: dict[str, Any] = {
        "calls": [], "log": {}, "seq": {}, "senders": {}, "sent": [], "beacons": [],
        "settings": dict(SETTINGS), "terms": [{"id": "t1", "term": "spoiler", "action": "hold",
                                               "created_at": T0}],
        "bans": [{"target": "guest:abc123", "target_name": "loud-otter-7", "expires_at": "2099-01-01T00:00:00Z",
                  "reason": "caps", "created_at": T0}],
        "reports": [
            {"id": "r1", "kind": "report", "message": {"id": "m-r1", "seq": 4, "ts": 0, "text": "buy followers at spam.example",
                                                       "from": {"id": "p9", "name": "spammer", "role": "viewer"}},
             "reporter": {"id": "u-fan", "username": "fan"}, "reason": "spam", "status": "open",
             "created_at": T0, "resolved_at": None, "resolution": None},
            {"id": "r2", "kind": "held", "message": {"id": "m-r2", "seq": 5, "ts": 0, "text": "no spoiler please",
                                                     "from": {"id": "p8", "name": "fan", "role": "viewer", "user": "u-fan"}},
             "reporter": None, "reason": "", "status": "open", "created_at": T0, "resolved_at": None, "resolution": None},
        ],
        "mods": [{"user_id": "u-mod", "username": "helper", "created_at": T0}],
        "entries": [{"id": "e1", "actor": {"id": "u-demo", "username": "demo"}, "action": "timeout",
                     "target": "guest:abc123", "target_name": "loud-otter-7", "reason": "caps", "detail": None,
                     "created_at": T0}],
        "replay": [],
    }
    app[STATE] = state
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    sio.attach(app)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        request = environ["aiohttp.request"]
        user = _user_of(request.cookies)
        state["senders"][sid] = {"id": uuid.uuid4().hex[:12], "name": user["username"] if user else "swift-otter-42",
                                 "role": "viewer", **({"user": user["id"]} if user else {})}

    @sio.on("join")
    async def join(sid: str, data: Any) -> dict[str, Any]:
        room = data.get("room") if isinstance(data, dict) else None
        if not isinstance(room, str):
            return {"error": 'expected {"room": name}'}
        await sio.enter_room(sid, f"room:{room}")
        sender = state["senders"][sid]
        moderator = sender.get("user") == "u-demo"
        return {"room": room, "live": True, "viewers": 3, "chat": {
            "participant": sender, "history": state["log"].get(room, [])[-50:], "moderator": moderator,
            "badges": ["broadcaster"] if moderator else []}}

    @sio.on("leave")
    async def leave(sid: str, data: Any = None) -> dict[str, Any]:
        for room in sio.rooms(sid):
            if room.startswith("room:"):
                await sio.leave_room(sid, room)
        return {"left": None}

    @sio.on("chat")
    async def chat(sid: str, data: Any) -> dict[str, Any]:
        text = data.get("text") if isinstance(data, dict) else None
        rooms = [r[5:] for r in sio.rooms(sid) if r.startswith("room:")]
        if not isinstance(text, str) or not rooms:
            return {"error": "bad_message", "detail": "join first"}
        state["sent"].append(text)
        for prefix, refusal in REFUSALS.items():
            if text.startswith(prefix):
                return refusal
        room = rooms[0]
        state["seq"][room] = state["seq"].get(room, 0) + 1
        sender = dict(state["senders"][sid])
        if sender.get("user") == "u-demo":
            sender["badges"] = ["broadcaster"]
        message = {"type": "chat", "seq": state["seq"][room], "id": uuid.uuid4().hex, "ts": int(time.time() * 1000),
                   "from": sender, "text": text.strip()}
        names = [m.lower() for m in re.findall(r"@([A-Za-z0-9_]{3,25})", text)]
        if names:
            message["mentions"] = list(dict.fromkeys(names))
        state["log"].setdefault(room, []).append(message)
        await sio.emit("chat", message, room=f"room:{room}")
        return {"message": message}

    def record(request: web.Request, body: Any = None) -> None:
        state["calls"].append((request.method, request.path, body))

    async def me(request: web.Request) -> web.Response:
        user = _user_of(request.cookies)
        if user is None:
            return web.json_response({"type": "about:blank", "title": "Unauthorized", "status": 401},
                                     status=401, content_type="application/problem+json")
        return web.json_response(user)

    async def chat_me(request: web.Request) -> web.Response:
        user = _user_of(request.cookies)
        mod = user is not None and user["id"] == "u-demo" and request.match_info["name"] == "demo"
        return web.json_response({"moderator": mod, "broadcaster": mod, "banned": False, "timed_out_until": None,
                                  "settings": state["settings"]})

    async def settings(request: web.Request) -> web.Response:
        if request.method == "PATCH":
            body = await request.json()
            record(request, body)
            state["settings"].update(body)
        return web.json_response(state["settings"])

    def listing(state_key: str, member: str):
        async def handler(request: web.Request) -> web.Response:
            items = state[state_key]
            if state_key == "reports":
                items = [r for r in items if r["status"] == request.query.get("status", "open")]
            out: dict[str, Any] = {member: items}
            if state_key in ("reports", "entries"):
                out["next_cursor"] = None
            return web.json_response(out)

        return handler

    async def write(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        record(request, body)
        path = request.path
        if path.endswith("/blocked-terms"):
            term = {"id": f"t{len(state['terms']) + 1}", "term": body["term"], "action": body["action"],
                    "created_at": T0}
            state["terms"].append(term)
            return web.json_response(term, status=201)
        if path.endswith("/bans"):
            ban = {"target": f"user:{body.get('user')}", "target_name": body.get("user") or body.get("participant"),
                   "expires_at": None if "duration_s" not in body else "2099-01-01T00:00:00Z",
                   "reason": body.get("reason"), "created_at": T0}
            state["bans"].append(ban)
            return web.json_response(ban, status=201)
        if path.endswith("/reports"):
            return web.json_response({"id": "r9"}, status=201)
        if path.endswith("/resolve"):
            report = next(r for r in state["reports"] if r["id"] == request.match_info["id"])
            report.update(status="dismissed" if body["action"] == "dismiss" else "resolved", resolution=body["action"])
            return web.json_response(report)
        return web.Response(status=204)

    async def remove(request: web.Request) -> web.Response:
        record(request)
        return web.Response(status=204)

    async def analytics(request: web.Request) -> web.Response:
        return web.json_response(_analytics(request.match_info["id"]))

    async def ingest(request: web.Request) -> web.Response:
        return web.json_response(_analytics("s-demo")["ingest"]["latest"])

    async def stream_chat(request: web.Request) -> web.Response:
        """The replay messages, paged backwards 2 at a time (``before`` = a message id)."""
        messages = state["replay"]
        before = request.query.get("before")
        end = next((i for i, m in enumerate(messages) if m["id"] == before), len(messages))
        start = max(0, end - 2)
        return web.json_response({"messages": messages[start:end],
                                  "next_before": messages[start]["id"] if start > 0 else None})

    async def beacons(request: web.Request) -> web.Response:
        try:
            batch = BeaconBatch.model_validate_json(await request.read())
        except ValidationError as exc:
            state["beacons"].append({"invalid": json.loads(exc.json())})
            return web.json_response({"status": 422}, status=422)
        state["beacons"].extend(b.model_dump(exclude_none=True) for b in batch.beacons)
        return web.json_response({"accepted": len(batch.beacons)}, status=202)

    async def notifications(_request: web.Request) -> web.Response:
        return web.json_response({"notifications": [], "unread": 0, "next_cursor": None})

    r = app.router
    r.add_get("/api/users/me", me)
    r.add_get("/api/notifications", notifications)
    r.add_get("/api/channels/{name}/chat/me", chat_me)
    r.add_route("*", "/api/channels/{name}/chat/settings", settings)
    for path, state_key, member in (("chat/blocked-terms", "terms", "terms"), ("chat/bans", "bans", "bans"),
                                    ("chat/reports", "reports", "reports"), ("moderators", "mods", "moderators"),
                                    ("moderation/log", "entries", "entries")):
        r.add_get(f"/api/channels/{{name}}/{path}", listing(state_key, member))
    r.add_post("/api/channels/{name}/chat/blocked-terms", write)
    r.add_post("/api/channels/{name}/chat/bans", write)
    r.add_post("/api/channels/{name}/chat/reports", write)
    r.add_post("/api/channels/{name}/chat/reports/{id}/resolve", write)
    r.add_post("/api/channels/{name}/chat/clear", write)
    r.add_put("/api/channels/{name}/moderators/{username}", write)
    r.add_delete("/api/channels/{name}/{rest:.+}", remove)
    r.add_get("/api/streams/{id}/analytics", analytics)
    r.add_get("/api/streams/{id}/chat", stream_chat)
    r.add_get("/api/channels/{name}/ingest", ingest)
    r.add_post("/api/beacons", beacons)
    return sio
