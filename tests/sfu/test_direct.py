"""sfu.direct: the SFU's direct-consumer API on a real in-process SFU with a real WHIP publisher."""

from __future__ import annotations

import pytest

from loadtest import whip_client
from loadtest.sources import PatternVideoTrack, ToneAudioTrack
from sfu.direct import DirectTransport, MediaPacket
from sfu.errors import RoomNotLive
from tests.polling import wait_for
from tests.services import STREAM_KEY


class Sink:
    def __init__(self) -> None:
        self.packets: list[MediaPacket] = []

    def forward(self, media: MediaPacket) -> None:
        self.packets.append(media)


async def test_direct_consumer_taps_holds_and_reports(service) -> None:
    direct = DirectTransport(service.worker)
    assert direct.rooms() == [] and direct.room("demo") is None
    with pytest.raises(RoomNotLive):
        direct.tap("demo", "video")

    pub = await whip_client.publish(
        f"{service.url}/whip/demo", STREAM_KEY, [PatternVideoTrack(320, 180, 30), ToneAudioTrack()]
    )
    try:
        await whip_client.wait_connected(pub.pc)
        await wait_for(lambda: (direct.room("demo") or None) and direct.room("demo").live, 10,
                       "the room to go live")
        info = direct.room("demo")
        assert info is not None and [r.name for r in direct.rooms()] == ["demo"]
        assert set(info.tracks) == {"video", "audio"} and info.viewers == 0
        assert (info.tracks["video"].mime_type.lower(), info.tracks["video"].clock_rate) == ("video/vp8", 90000)
        assert info.tracks["audio"].codec.clockRate == 48000

        video, sink = direct.tap("demo", "video"), Sink()
        video.add_consumer(sink)
        video.request_keyframe()
        await wait_for(lambda: any(p.keyframe for p in sink.packets), 10, "a key frame through the tap")
        video.remove_consumer(sink)
        seen = len(sink.packets)
        await wait_for(lambda: service.worker.routers["demo"].producers["video"].packets > 30 + seen, 10,
                       "more packets forwarded")
        assert len(sink.packets) == seen, "a removed sink gets nothing more"

        assert direct.hold("demo", "test") and "test" in service.worker.routers["demo"].holders
        direct.release("demo", "test")
        assert "test" not in service.worker.routers["demo"].holders
        assert not direct.hold("elsewhere", "test")

        direct.add_load_section("probe", lambda: {"n": 1})
        assert service.worker.load()["probe"] == {"n": 1}
        assert not video.closed
    finally:
        await pub.close()
    await wait_for(lambda: video.closed, 10, "the tap to see the track end")
