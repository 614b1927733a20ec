"""One conversation for every tier, through the real service: WebRTC participants on their
``chat`` data channels (aiortc) and pages on Socket.IO (python-socketio, as an LL-HLS
viewer's page chats) see the same messages in the same order, under the identity the
platform gives them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from loadtest import whip_client
from relaycast.service import Service
from signaling.app_keys import CHAT
from signaling.chat import ChatPolicy, Sender, Verdict
from tests.chat_client import ChatClient
from tests.chat_page import ChatPage
from tests.services import access_token, make_channel
from tests.sfu.sfu_helpers import publish_pattern


@pytest.fixture
async def chat_pages() -> AsyncIterator[list[ChatPage]]:
    made: list[ChatPage] = []
    yield made
    for page in made:
        await page.close()


async def new_page(pages: list[ChatPage], svc: Service, token: str | None = None) -> ChatPage:
    page = ChatPage(token)
    pages.append(page)
    await page.join(svc.url, "demo")
    return page


async def test_data_channels_and_pages_share_one_sequence_and_identity(
    service: Service, chat_channels: Any, chat_pages: list[ChatPage]
) -> None:
    app = service.app
    await make_channel(app, "alice")
    alice_token = await access_token(app, "alice")
    publisher = await publish_pattern(service, audio=False, chat=True)
    broadcaster = ChatClient(publisher, chat_channels[publisher.pc])
    await broadcaster.first("history")
    # A logged-in WebRTC viewer (its WHEP request carries an access token).
    session = await whip_client.view(f"{service.url}/whep/demo", chat=True, token=alice_token)
    await whip_client.wait_connected(session.pc)
    viewer = ChatClient(session, chat_channels[session.pc])
    welcome = await viewer.first("welcome")
    assert welcome["participant"]["name"] == "alice" and welcome["participant"]["user"]
    await viewer.first("history")
    # Pages: a guest and a logged-in user.
    guest = await new_page(chat_pages, service)
    member = await new_page(chat_pages, service, alice_token)
    assert "user" not in guest.welcome["participant"]
    assert member.welcome["participant"]["name"] == "alice"
    assert member.welcome["participant"]["user"] == welcome["participant"]["user"]

    # Interleave the four participants.
    texts = []
    for i in range(3):
        viewer.chat(f"dc-{i}")
        texts.append(f"dc-{i}")
        await viewer.first("chat", text=f"dc-{i}")  # keep a known interleaving
        ack = await guest.send(f"page-{i}")
        assert ack["message"]["text"] == f"page-{i}"
        texts.append(f"page-{i}")
    ack = await member.send("hi @Alice")
    assert ack["message"]["mentions"] == ["alice"]
    broadcaster.chat("from the broadcaster")
    texts += ["hi @Alice", "from the broadcaster"]

    def all_arrived(events: list[dict[str, Any]]) -> bool:
        return len([e for e in events if e["type"] == "chat"]) == len(texts)

    await broadcaster.until(all_arrived)
    await viewer.until(all_arrived)
    await guest.until(all_arrived)
    await member.until(all_arrived)
    orders = [[(m["seq"], m["id"]) for m in c.of_type("chat")] for c in (broadcaster, viewer)]
    orders += [[(m["seq"], m["id"]) for m in p.chats()] for p in (guest, member)]
    assert all(order == orders[0] for order in orders)  # one sequence, one order, every tier
    assert [m["text"] for m in guest.chats()] == texts
    seqs = [seq for seq, _ in orders[0]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    by_text = {m["text"]: m for m in guest.chats()}
    assert by_text["dc-0"]["from"]["name"] == "alice" and by_text["dc-0"]["from"]["role"] == "viewer"
    assert by_text["page-0"]["from"]["name"] == guest.welcome["participant"]["name"]
    assert by_text["from the broadcaster"]["from"]["role"] == "publisher"

    # A newcomer on either tier gets the same history.
    late = await new_page(chat_pages, service)
    assert [m["id"] for m in late.welcome["history"]] == [i for _, i in orders[0]]


class RefuseGuests(ChatPolicy):
    async def check(self, room: str, sender: Sender, text: str) -> Verdict:
        if sender.user_id is None:
            return Verdict("refuse", "guests_off", "log in to chat")
        return Verdict()


async def test_a_policy_refusal_reaches_the_sender_on_both_paths(
    service: Service, chat_channels: Any, chat_pages: list[ChatPage]
) -> None:
    service.app[CHAT].policy = RefuseGuests()
    await publish_pattern(service, audio=False)
    session = await whip_client.view(f"{service.url}/whep/demo", chat=True)
    await whip_client.wait_connected(session.pc)
    viewer = ChatClient(session, chat_channels[session.pc])
    await viewer.first("history")
    guest = await new_page(chat_pages, service)
    viewer.chat("let me in")
    error = await viewer.first("error")
    assert error["code"] == "guests_off"
    assert (await guest.send("me too"))["error"] == "guests_off"
    assert guest.chats() == [] and viewer.of_type("chat") == []


async def test_one_conversation_across_signaling_instances_in_redis_mode(
    redis_server: Any, chat_channels: Any, chat_pages: list[ChatPage]
) -> None:
    """Two signaling instances on one Redis, a node process on instance A: a WebRTC
    publisher's data channel (through A) and pages on A and on B share one order."""
    from loadtest.sources import PatternVideoTrack
    from tests.cluster import running_cluster
    from tests.services import STREAM_KEY

    async with running_cluster(redis_server) as cluster:
        await cluster.node("sfu-a", cluster.a)
        pub = await whip_client.publish(f"{cluster.a.url}/whip/demo", STREAM_KEY,
                                        [PatternVideoTrack(160, 90, 10)], chat=True)
        await whip_client.wait_connected(pub.pc, timeout=20)
        dc = ChatClient(pub, chat_channels[pub.pc])
        await dc.first("history")
        on_a = await new_page(chat_pages, cluster.a)
        on_b = await new_page(chat_pages, cluster.b)
        for i in range(4):
            dc.chat(f"dc-{i}")
            assert "message" in await on_b.send(f"b-{i}")
            assert "message" in await on_a.send(f"a-{i}")

        def twelve(events: list[dict[str, Any]]) -> bool:
            return len([e for e in events if e["type"] == "chat"]) == 12

        await dc.until(twelve)
        await on_a.until(twelve)
        await on_b.until(twelve)
        order = [m["id"] for m in dc.of_type("chat")]
        assert [m["id"] for m in on_a.chats()] == order == [m["id"] for m in on_b.chats()]
        assert [m["seq"] for m in on_b.chats()] == sorted(m["seq"] for m in on_b.chats())
        # Moderation events reach every tier on every instance.
        await cluster.b.app[CHAT].delete("demo", [order[0]])
        await dc.first("delete")
        await on_a.until(lambda events: any(e["type"] == "delete" for e in events))
        history = await cluster.a.app[CHAT].history("demo")
        assert order[0] not in [m["id"] for m in history] and len(history) == 11


async def test_a_private_rooms_chat_needs_its_playback_token(
    service: Service, chat_pages: list[ChatPage]
) -> None:
    from community.tokens import tokens_of

    await make_channel(service.app, "secret", private=True)
    outsider = ChatPage()
    chat_pages.append(outsider)
    await outsider.sio.connect(service.url, transports=["websocket"], wait_timeout=10)
    refused = await outsider.sio.call("join", {"room": "secret"}, timeout=10)
    assert refused["status"] == 401 and "chat" not in refused
    assert (await outsider.send("hello?"))["error"] == "bad_message"  # never joined
    bad = await outsider.sio.call("join", {"room": "secret", "token": "x.y.z"}, timeout=10)
    assert bad["status"] == 401
    token, _ = await tokens_of(service.app).issue_playback("secret", None)
    joined = await outsider.sio.call("join", {"room": "secret", "token": token}, timeout=10)
    assert joined["room"] == "secret" and "chat" in joined


async def test_a_node_request_past_its_deadline_is_refused_not_numbered(service: Service) -> None:
    """A data-channel message signaling only gets to after the node stopped waiting must
    not be numbered: the node has told its sender "not sent"."""
    import time

    from signaling.app_keys import NAMESPACE_KEY

    namespace = service.app[NAMESPACE_KEY]
    sid = next(iter(namespace.registry.nodes))
    participant = {"id": "p1", "name": "late", "role": "viewer"}
    now_ms = time.time() * 1000
    late = await namespace.on_chat_send(sid, {"room": "demo", "participant": participant,
                                              "text": "stale", "deadline": now_ms - 1})
    assert late["error"] == "unavailable"
    fresh = await namespace.on_chat_send(sid, {"room": "demo", "participant": participant,
                                               "text": "fresh", "deadline": now_ms + 60_000})
    assert fresh["message"]["text"] == "fresh"
    assert [m["text"] for m in await service.app[CHAT].history("demo")] == ["fresh"]
    # Only registered nodes may speak for participants; pipes never chat.
    assert (await namespace.on_chat_send("not-a-node", {"room": "demo"}))["error"] == "unavailable"
    pipe = {**participant, "role": "pipe"}
    refused = await namespace.on_chat_send(sid, {"room": "demo", "participant": pipe, "text": "x"})
    assert refused["error"] == "bad_message"


async def test_chat_counters_are_on_the_metrics_page(
    service: Service, chat_pages: list[ChatPage], http: Any
) -> None:
    page = await new_page(chat_pages, service)
    assert "message" in await page.send("counted")
    assert (await page.send(""))["error"] == "bad_message"
    async with http.get(f"{service.url}/metrics") as resp:
        text = await resp.text()
    assert 'relaycast_chat_messages_total{via="socketio"} 1.0' in text
    assert 'relaycast_chat_refused_total{code="bad_message"} 1.0' in text
    assert "relaycast_chat_delivery_dropped_total 0.0" in text


async def test_a_flooding_page_is_refused_then_disconnected(
    service: Service, chat_pages: list[ChatPage]
) -> None:
    from signaling import browser

    await make_channel(service.app, "carol")
    flooder = await new_page(chat_pages, service)
    guest = await new_page(chat_pages, service)  # another guest from the same address
    other = await new_page(chat_pages, service, await access_token(service.app, "carol"))
    codes = []
    for i in range(browser.FLOOD_REFUSALS + 40):
        try:
            reply = await flooder.sio.call("chat", {"text": f"flood {i}"}, timeout=2)
        except Exception:  # disconnected: no ack
            break
        codes.append(reply.get("error", "ok"))
    assert codes[:10] == ["ok"] * 10  # the burst
    assert codes.count("rate_limited") >= browser.FLOOD_REFUSALS - 1
    assert not flooder.sio.connected or await _disconnected(flooder)
    # The flooder's address is muted for guests (a reconnecting guest gets a fresh bucket);
    # users keep their own bucket and chat on.
    muted = await guest.send("me too?")
    assert muted["error"] == "rate_limited" and muted["retry_after"] > 30
    assert "message" in await other.send("still here")


async def _disconnected(page: ChatPage) -> bool:
    from tests.polling import wait_for

    await wait_for(lambda: not page.sio.connected, 5, "the flooder disconnected")
    return True
