"""Loss recovery and key frames through the real SFU.

* NACK: one viewer loses every 15th new video packet on its way in (tests/sfu/
  lossy.py drops them inside the viewer, after SRTP).  The SFU's consumer must
  answer the viewer's NACKs from its history (RTX), so every decoded frame is
  intact and the counter codes keep increasing; a second, lossless viewer sees
  no NACK traffic at all.
* PLI: a viewer that joins long after the publisher's first key frame (aiortc's
  VP8 encoder has a 3000-frame GOP, i.e. 100 s at 30 fps) only gets a picture
  because the SFU asks the publisher for a key frame.
"""

from __future__ import annotations

import time
from typing import Any

from loadtest import whip_client
from tests.polling import wait_for
from tests.sfu.lossy import RtpTap, payload_types
from tests.sfu.sfu_helpers import publish_pattern, read_frames, receiver_tracks

DROP_EVERY = 15


async def test_nack_recovers_induced_loss_for_one_viewer_only(service: Any) -> None:
    pub = await publish_pattern(service)
    lossy = await whip_client.view(f"{service.url}/whep/demo")
    clean = await whip_client.view(f"{service.url}/whep/demo")
    try:
        media_pt, rtx_pt = payload_types(lossy.answer, "video")
        assert rtx_pt is not None, "the SFU answers RTX for VP8"
        tap = RtpTap(media_pt, rtx_pt, drop_every=DROP_EVERY).install(lossy.pc)
        await whip_client.wait_connected(lossy.pc)
        await whip_client.wait_connected(clean.pc)
        router = service.worker.routers["demo"]
        lossy_consumer = router.viewers[lossy.location.rsplit("/", 1)[1]].consumers["video"]
        clean_consumer = router.viewers[clean.location.rsplit("/", 1)[1]].consumers["video"]

        lossy_video = await read_frames(receiver_tracks(lossy.pc)["video"], 120, timeout=40)
        clean_video = await read_frames(receiver_tracks(clean.pc)["video"], 120, timeout=40)
    finally:
        await lossy.close()
        await clean.close()
        await pub.close()

    recovered = tap.dropped & {r.seq for r in tap.records if r.rtx}
    print(
        f"\nlossy viewer: dropped {len(tap.dropped)} packets, {len(recovered)} came back as RTX; "
        f"consumer nacks_received={lossy_consumer.nacks_received} "
        f"retransmits={lossy_consumer.retransmits}; decoded {len(lossy_video.codes)} frames, "
        f"unreadable {lossy_video.codes.count(None)}, skipped {lossy_video.skipped()}"
    )
    print(f"clean viewer: retransmits={clean_consumer.retransmits} skipped {clean_video.skipped()}")
    assert len(tap.dropped) >= 10, "the test must actually lose packets"
    # (a) the SFU answered the NACKs from its sequencer ring.
    assert lossy_consumer.nacks_received > 0
    assert lossy_consumer.retransmits > 0
    assert len(recovered) >= len(tap.dropped) * 0.8, (sorted(tap.dropped), sorted(recovered))
    # (b) every frame intact: codes read back and increase; almost nothing skipped.
    codes = lossy_video.codes
    assert codes.count(None) <= max(1, len(codes) // 100), codes
    good = lossy_video.readable
    assert all(b > a for a, b in zip(good, good[1:], strict=False)), good
    assert lossy_video.skipped() <= 10, f"NACK did not recover: {good}"
    # (c) the lossless viewer is unaffected.
    assert clean_consumer.nacks_received == 0 and clean_consumer.retransmits == 0
    assert None not in clean_video.codes
    clean_good = clean_video.readable
    assert all(b > a for a, b in zip(clean_good, clean_good[1:], strict=False))
    assert clean_video.skipped() <= 5


async def test_late_joiner_gets_a_keyframe_through_pli(service: Any) -> None:
    pub = await publish_pattern(service, audio=False)
    viewer = None
    try:
        router = service.worker.routers["demo"]
        producer = router.producers["video"]
        video_track = pub.tracks[0]
        # Stream for >= 3 s (90 frames at 30 fps) before anybody watches.
        await wait_for(
            lambda: video_track.frames_produced >= 90, 30, "3 s of publishing", interval_s=0.02
        )
        await wait_for(lambda: producer.packets > 0, 10, "packets at the SFU", interval_s=0.02)
        keyframes_before = producer.keyframes
        plis_before = producer.keyframe_requester.sent
        assert keyframes_before == 1, "aiortc's VP8 encoder sends one key frame, then a long GOP"

        joined = time.monotonic()
        viewer = await whip_client.view(f"{service.url}/whep/demo", kinds=("video",))
        await whip_client.wait_connected(viewer.pc)
        connected = time.monotonic()
        video = await read_frames(receiver_tracks(viewer.pc)["video"], 10, timeout=15)
        assert video.first_frame_at is not None
        first_frame_s = video.first_frame_at - connected
        print(
            f"\nlate joiner: connected in {connected - joined:.3f} s, first decoded frame "
            f"{first_frame_s:.3f} s after connecting ({video.first_frame_at - joined:.3f} s after "
            f"POST); PLIs sent upstream {producer.keyframe_requester.sent - plis_before}, "
            f"key frames {producer.keyframes - keyframes_before}"
        )
        assert producer.keyframe_requester.sent > plis_before, "the SFU sent a PLI upstream"
        assert producer.keyframes > keyframes_before, "the publisher answered with a key frame"
        assert first_frame_s < 3.0
        assert None not in video.codes
        assert video.codes[0] is not None and video.codes[0] >= 90  # live, not a replay
    finally:
        if viewer is not None:
            await viewer.close()
        await pub.close()
