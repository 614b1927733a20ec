"""LL-HLS playlist model + writer, checked with the m3u8 parser and llhls_checker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import m3u8
import pytest

from hls_bridge.model import (
    MediaPlaylist,
    PlaylistStateError,
    ServerControl,
    default_init_uri,
    default_part_uri,
    default_segment_uri,
)
from hls_bridge.playlist import (
    AudioRendition,
    BadDeliveryDirective,
    VariantStream,
    blocking_timeout,
    check_blocking_request,
    render,
    render_multivariant,
    rendition_report,
    skipped_segment_count,
)
from hls_bridge.store import RenditionStore, RoomStore, StoreError, init_uri
from tests.hls_bridge import llhls_checker as checker

PART = 0.2
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def split_gop(gop: float, part_target: float = PART) -> list[float]:
    """Cut one GOP into parts of ``part_target`` seconds; the last one may be shorter."""
    parts = []
    left = round(gop, 6)
    while left > 1e-9:
        d = min(part_target, left)
        parts.append(round(d, 6))
        left = round(left - d, 6)
    return parts


def new_playlist(name: str = "v0", **kw) -> MediaPlaylist:
    kw.setdefault("target_duration", 1)
    kw.setdefault("part_target", PART)
    return MediaPlaylist(init_uri=default_init_uri(name), **kw)


def feed_segment(
    pl: MediaPlaylist, name: str, gop: float, renders: list[str] | None = None
) -> None:
    """Feed one GOP as parts (keyframe in the first), close it, render after each step.

    The segment's EXT-X-PROGRAM-DATE-TIME follows on from the previous segment (T0 first).
    """
    start = T0
    if pl.segments:
        last = pl.segments[-1]
        assert last.program_date_time is not None
        start = last.program_date_time + timedelta(seconds=last.duration)
    msn = pl.next_msn
    durations = split_gop(gop, pl.part_target)
    for i, d in enumerate(durations):
        last = i == len(durations) - 1
        pl.add_part(
            d,
            default_part_uri(name, msn, i),
            independent=(i == 0),
            hint=None if last else default_part_uri(name, msn, i + 1),
        )
        if last:
            # final part and segment close happen together (see MediaPlaylist docstring)
            pl.close_segment(
                default_segment_uri(name, msn), start, hint=default_part_uri(name, msn + 1, 0)
            )
        if renders is not None:
            renders.append(render(pl))


def build(
    gops: list[float],
    *,
    name: str = "v0",
    trailing_parts: int = 0,
    ended: bool = False,
    renders: list[str] | None = None,
    **kw,
) -> MediaPlaylist:
    pl = new_playlist(name, **kw)
    for gop in gops:
        feed_segment(pl, name, gop, renders)
    msn = pl.next_msn
    for i in range(trailing_parts):
        pl.add_part(
            PART, default_part_uri(name, msn, i), i == 0, hint=default_part_uri(name, msn, i + 1)
        )
        if renders is not None:
            renders.append(render(pl))
    if ended:
        pl.end()
        if renders is not None:
            renders.append(render(pl))
    return pl


SCENARIOS = {
    "one-part": dict(gops=[], trailing_parts=1),
    "first-segment": dict(gops=[1.0]),
    "steady-1s-gops": dict(gops=[1.0] * 20, trailing_parts=3),
    "uneven-gops": dict(gops=[1.0, 0.9, 1.2, 0.5, 1.4, 1.0, 0.7] * 3, trailing_parts=2),
    "ended": dict(gops=[1.0] * 8, ended=True),
    "small-window": dict(gops=[1.0] * 10, trailing_parts=4, window_segments=3),
    "2s-target-0.5s-parts": dict(
        gops=[2.0, 1.5, 2.0] * 4, trailing_parts=1, target_duration=2, part_target=0.5
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_every_render_conforms(scenario: dict) -> None:
    renders: list[str] = []
    build(renders=renders, **scenario)
    assert renders
    for text in renders:
        checker.check_media(text)
        assert m3u8.loads(text).version == 9
    checker.check_sequence(renders)


@pytest.mark.parametrize(
    ("gops", "trailing", "ended", "window", "media_sequence", "listed", "with_parts"),
    [
        # 20 x 1 s segments, window 12: msn 8..19 listed; parts for segments starting
        # within 3 s of the end (3 trailing parts = 0.6 s -> segments 17, 18, 19 start
        # 3.6, 2.6, 1.6 s before the end, so 17 loses its parts), and for at most the
        # last three segments, the in-progress one counted even while it is only a
        # preload hint (§4.4.4.9; strict parsers reject parts on a fourth)
        ([1.0] * 20, 3, False, 12, 8, 12, [18, 19, 20]),
        ([1.0] * 20, 0, False, 12, 8, 12, [18, 19]),
        ([1.0] * 5, 0, False, 12, 0, 5, [3, 4]),
        ([1.0] * 10, 4, False, 3, 7, 3, [8, 9, 10]),
        # after ENDLIST there is no in-progress segment: the last three closed ones
        ([1.0] * 5, 0, True, 12, 0, 5, [2, 3, 4]),
    ],
)
def test_window_and_part_retention(
    gops, trailing, ended, window, media_sequence, listed, with_parts
):
    pl = build(gops, trailing_parts=trailing, ended=ended, window_segments=window)
    parsed = checker.check_media(render(pl))
    entries = checker.entries(parsed)
    assert parsed.media_sequence == pl.media_sequence == media_sequence
    assert len([e for e in entries if e.uri is not None]) == listed
    assert [e.msn for e in entries if e.parts] == with_parts
    assert pl.parts_listed_from() == with_parts[0]


def test_rendered_text_exact_attributes() -> None:
    pl = build([1.0] * 2, trailing_parts=2)
    text = render(pl)
    assert (
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.0,HOLD-BACK=3.0,PART-HOLD-BACK=0.6\n"
        in text
    )
    assert "#EXT-X-PART-INF:PART-TARGET=0.2\n" in text
    assert "#EXT-X-TARGETDURATION:1\n" in text
    assert '#EXT-X-MAP:URI="v0/init.mp4"\n' in text
    assert "#EXT-X-INDEPENDENT-SEGMENTS\n" in text
    assert "#EXT-X-PROGRAM-DATE-TIME:2026-01-01T12:00:01.000Z\n#EXT-X-PART:DURATION=0.2," in text
    assert '#EXT-X-PART:DURATION=0.2,URI="v0/part2.0.m4s",INDEPENDENT=YES\n' in text
    assert '#EXT-X-PART:DURATION=0.2,URI="v0/part2.1.m4s"\n' in text
    assert text.endswith('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="v0/part2.2.m4s"\n')
    parsed = m3u8.loads(text)
    assert parsed.segments[1].uri == "v0/seg1.m4s"
    assert parsed.segments[1].program_date_time == T0 + timedelta(seconds=1)
    assert parsed.preload_hint.uri == "v0/part2.2.m4s"


def test_endlist_drops_preload_hint_and_rejects_more_media() -> None:
    pl = build([1.0] * 3)
    assert "#EXT-X-PRELOAD-HINT" in render(pl)
    pl.end()
    text = render(pl)
    assert "#EXT-X-PRELOAD-HINT" not in text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    assert m3u8.loads(text).is_endlist
    with pytest.raises(PlaylistStateError):
        pl.add_part(PART, "x", True)


@pytest.mark.parametrize(
    ("gops", "trailing", "kw", "expected_skipped"),
    [
        # 12 x 1 s listed + 0.4 s in progress = 12.4 s; keep >= 6 s -> skip 6
        ([1.0] * 20, 2, {}, 6),
        ([1.0] * 20, 0, {}, 6),
        # 7 s listed: skipping one leaves 6 s exactly
        ([1.0] * 7, 0, {}, 1),
        ([1.0] * 6, 3, {}, 0),
        # CAN-SKIP-UNTIL 8 s: 12.4 - 8 -> skip 4
        (
            [1.0] * 20,
            2,
            {"server_control": ServerControl.for_targets(1, PART, skip_until_factor=8)},
            4,
        ),
        # no CAN-SKIP-UNTIL: delta updates not offered, the full playlist is served
        (
            [1.0] * 20,
            2,
            {"server_control": ServerControl.for_targets(1, PART, skip_until_factor=None)},
            0,
        ),
        ([2.0] * 20, 1, {"target_duration": 2, "part_target": 0.5}, 6),
    ],
)
def test_delta_update(gops, trailing, kw, expected_skipped) -> None:
    pl = build(gops, trailing_parts=trailing, **kw)
    full, delta = render(pl), render(pl, skip=True)
    assert skipped_segment_count(pl) == expected_skipped
    assert checker.skipped(m3u8.loads(delta)) == expected_skipped
    assert ("#EXT-X-SKIP:SKIPPED-SEGMENTS" in delta) == (expected_skipped > 0)
    if expected_skipped == 0:
        assert delta == full
    checker.check_delta(full, delta)


def test_no_delta_update_after_endlist() -> None:
    pl = build([1.0] * 20, ended=True)
    assert render(pl, skip=True) == render(pl)


def _lockstep(names: list[str], gops: list[float], trailing: int) -> dict[str, MediaPlaylist]:
    pls = {n: new_playlist(n) for n in names}
    for gop in gops:
        for n, pl in pls.items():
            feed_segment(pl, n, gop)
    for n, pl in pls.items():
        for i in range(trailing):
            pl.add_part(PART, default_part_uri(n, pl.next_msn, i), i == 0)
    return pls


def _render_all(pls: dict[str, MediaPlaylist], *, mutate=None) -> dict[str, str]:
    uris = {n: f"../{n}/index.m3u8" for n in pls}
    out = {}
    for n, pl in pls.items():
        reports = [rendition_report(o, uris[on]) for on, o in pls.items() if on != n]
        if mutate:
            reports = mutate(reports)
        out[uris[n]] = render(pl, rendition_reports=reports)
    return out


@pytest.mark.parametrize(
    ("gops", "trailing"), [([1.0] * 4, 0), ([1.0] * 4, 3), ([0.9, 1.1] * 8, 1)]
)
def test_rendition_reports_consistent(gops, trailing) -> None:
    pls = _lockstep(["v0", "v1", "a"], gops, trailing)
    texts = _render_all(pls)
    checker.check_renditions(texts)
    report = m3u8.loads(texts["../v0/index.m3u8"]).rendition_reports[0]
    assert (report.last_msn, report.last_part) == pls["v1"].last_msn_part()


def test_last_msn_part() -> None:
    pl = new_playlist()
    assert pl.last_msn_part() is None
    assert rendition_report(pl, "x") is None
    pl.add_part(PART, "p0", True)
    assert pl.last_msn_part() == (0, 0)
    for i in range(1, 5):
        pl.add_part(PART, f"p{i}", False)
    pl.close_segment("s0")
    assert pl.last_msn_part() == (0, 4)
    pl.add_part(PART, "p", True)
    assert pl.last_msn_part() == (1, 0)


@pytest.mark.parametrize(
    ("msn", "part", "expected"),
    [
        (None, None, "ready"),
        (None, 0, BadDeliveryDirective),
        (-1, None, BadDeliveryDirective),
        (3, -1, BadDeliveryDirective),
        # state: segments 0..4 closed (5 parts each), segment 5 has parts 0 and 1
        (4, None, "ready"),
        (5, None, "wait"),
        (7, None, "wait"),
        (8, None, BadDeliveryDirective),
        (4, 4, "ready"),
        (4, 9, "ready"),  # a later part (5.0) exists: "or later", §6.2.5.2
        (5, 1, "ready"),
        (5, 2, "wait"),
        (5, 16, "wait"),  # within the advance part limit (3 s of parts)
        (5, 17, BadDeliveryDirective),
        (6, 0, "wait"),
        (7, 4, "wait"),
        (8, 0, BadDeliveryDirective),
        (0, 0, "ready"),  # long gone: still "ready"
    ],
)
def test_check_blocking_request(msn, part, expected) -> None:
    pl = build([1.0] * 5, trailing_parts=2)
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            check_blocking_request(pl, msn, part)
        assert info.value.status == 400
    else:
        assert check_blocking_request(pl, msn, part) == expected


def test_blocking_request_ignored_after_endlist_and_empty_playlist() -> None:
    pl = build([1.0] * 5, ended=True)
    assert check_blocking_request(pl, 100, 3) == "ready"
    assert check_blocking_request(pl, None, 3) == "ready"
    assert blocking_timeout(pl) == 3.0
    empty = new_playlist()
    assert check_blocking_request(empty, 0, 0) == "wait"
    assert check_blocking_request(empty, 1, None) == "wait"
    with pytest.raises(BadDeliveryDirective):
        check_blocking_request(empty, 2, None)
    empty.add_part(PART, "p", True)
    assert empty.has_part(0, 0) and not empty.has_part(0, 1) and not empty.has_segment(0)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda pl: pl.add_part(0.25, "p", True), "PART-TARGET"),
        (lambda pl: pl.add_part(0.0, "p", True), "PART-TARGET"),
        (lambda pl: pl.close_segment("s"), "at least one part"),
        (
            lambda pl: (
                [pl.add_part(PART, f"p{i}", i == 0) for i in range(8)] and pl.close_segment("s")
            ),
            "exceeds target",
        ),
        (lambda pl: pl.add_part(PART, "p", True) and pl.end(), "before end"),
    ],
)
def test_model_rejects_spec_violations(action, message) -> None:
    pl = new_playlist()
    with pytest.raises(PlaylistStateError, match=message):
        action(pl)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"part_hold_back_factor": 1.5}, "PART-HOLD-BACK"),
        ({"hold_back_factor": 2.0}, "HOLD-BACK"),
        ({"skip_until_factor": 5.0}, "CAN-SKIP-UNTIL"),
    ],
)
def test_server_control_minimums(kw, message) -> None:
    with pytest.raises(PlaylistStateError, match=message):
        ServerControl.for_targets(1, PART, **kw)


def test_server_control_defaults() -> None:
    assert ServerControl.for_targets(2, 0.5) == ServerControl(1.5, 6.0, 12.0)
    with pytest.raises(PlaylistStateError):
        new_playlist(target_duration=1, part_target=1.5)


def test_uri_helpers() -> None:
    assert default_segment_uri("720p", 12) == "720p/seg12.m4s"
    assert default_part_uri("720p", 12, 3) == "720p/part12.3.m4s"
    assert default_init_uri("720p") == "720p/init.mp4"


def test_multivariant() -> None:
    text = render_multivariant(
        [
            VariantStream(
                "720p/index.m3u8",
                2_800_000,
                "avc1.64001f,mp4a.40.2",
                average_bandwidth=2_500_000,
                resolution=(1280, 720),
                frame_rate=30,
                audio="aud",
            ),
            VariantStream(
                "360p/index.m3u8",
                900_000,
                "avc1.42e01e,mp4a.40.2",
                average_bandwidth=800_000,
                resolution=(640, 360),
                frame_rate=29.97,
                audio="aud",
            ),
        ],
        [AudioRendition("aud", "main", "audio/index.m3u8", language="en", channels="2")],
    )
    parsed = checker.check_multivariant(text)
    assert [p.stream_info.bandwidth for p in parsed.playlists] == [2_800_000, 900_000]
    info = parsed.playlists[0].stream_info
    assert (info.average_bandwidth, info.resolution, info.frame_rate, info.audio) == (
        2_500_000,
        (1280, 720),
        30.0,
        "aud",
    )
    assert info.codecs == "avc1.64001f,mp4a.40.2"
    media = parsed.media[0]
    assert (media.type, media.group_id, media.uri, media.default, media.autoselect) == (
        "AUDIO",
        "aud",
        "audio/index.m3u8",
        "YES",
        "YES",
    )
    with pytest.raises(ValueError, match="AUDIO group"):
        render_multivariant([VariantStream("v", 1, "avc1", audio="nope")])


# -- the checker catches broken playlists -------------------------------------------------


def _good() -> str:
    return render(build([1.0] * 6, trailing_parts=2))


BROKEN = {
    "part longer than PART-TARGET": (
        lambda t: t.replace(
            'DURATION=0.2,URI="v0/part5.1.m4s"', 'DURATION=0.25,URI="v0/part5.1.m4s"'
        ),
        "> PART-TARGET",
    ),
    "EXT-X-PART without PART-INF": (
        lambda t: t.replace("#EXT-X-PART-INF:PART-TARGET=0.2\n", ""),
        "§4.4.3.7",
    ),
    "short non-independent non-final part": (
        lambda t: t.replace(
            'DURATION=0.2,URI="v0/part6.1.m4s"', 'DURATION=0.1,URI="v0/part6.1.m4s"'
        ),
        "85%",
    ),
    "PART-HOLD-BACK too small": (
        lambda t: t.replace("PART-HOLD-BACK=0.6", "PART-HOLD-BACK=0.3"),
        "PART-HOLD-BACK",
    ),
    "HOLD-BACK too small": (
        lambda t: t.replace("HOLD-BACK=3.0,", "HOLD-BACK=2.0,"),
        "HOLD-BACK=2.0",
    ),
    "CAN-SKIP-UNTIL too small": (
        lambda t: t.replace("CAN-SKIP-UNTIL=6.0", "CAN-SKIP-UNTIL=3.0"),
        "CAN-SKIP-UNTIL",
    ),
    "no CAN-BLOCK-RELOAD": (lambda t: t.replace("CAN-BLOCK-RELOAD=YES,", ""), "CAN-BLOCK-RELOAD"),
    "preload hint after ENDLIST": (
        lambda t: t.replace("#EXT-X-PRELOAD-HINT", "#EXT-X-ENDLIST\n#EXT-X-PRELOAD-HINT"),
        "after EXT-X-ENDLIST",
    ),
    "segment longer than target duration": (
        lambda t: t.replace("#EXTINF:1.0,\nv0/seg1.m4s", "#EXTINF:1.6,\nv0/seg1.m4s"),
        "rounds above",
    ),
    "parts do not add up to EXTINF": (
        lambda t: t.replace("#EXTINF:1.0,\nv0/seg5.m4s", "#EXTINF:0.9,\nv0/seg5.m4s"),
        "parts sum",
    ),
    "parts listed too far back": (
        lambda t: t.replace(
            "#EXTINF:1.0,\nv0/seg1.m4s",
            '#EXT-X-PART:DURATION=0.2,URI="x",INDEPENDENT=YES\n#EXTINF:1.0,\nv0/seg1.m4s',
        ),
        "§6.2.2",
    ),
    "program date time not following EXTINF": (
        lambda t: t.replace("2026-01-01T12:00:03.000Z", "2026-01-01T12:00:03.500Z"),
        "PROGRAM-DATE-TIME",
    ),
    "dependent segment start under INDEPENDENT-SEGMENTS": (
        lambda t: t.replace('URI="v0/part5.0.m4s",INDEPENDENT=YES', 'URI="v0/part5.0.m4s"'),
        "starts dependent",
    ),
}


def test_good_playlist_has_no_problems() -> None:
    assert checker.media_problems(_good()) == []


@pytest.mark.parametrize(("mutate", "expected"), BROKEN.values(), ids=BROKEN.keys())
def test_checker_catches_broken_media_playlist(mutate, expected) -> None:
    broken = mutate(_good())
    assert broken != _good(), "mutation did not apply"
    problems = checker.media_problems(broken)
    assert any(expected in p for p in problems), problems
    with pytest.raises(checker.LlHlsViolation):
        checker.check_media(broken)


def test_checker_catches_inconsistent_renditions() -> None:
    pls = _lockstep(["v0", "v1"], [1.0] * 4, 2)
    stale = _render_all(
        pls, mutate=lambda rs: [type(r)(r.uri, r.last_msn - 1, r.last_part) for r in rs]
    )
    assert any("reports" in p for p in checker.renditions_problems(stale))
    missing = _render_all(pls, mutate=lambda rs: [])
    assert any("instead of the others" in p for p in checker.renditions_problems(missing))
    good = _render_all(pls)
    key = "../v1/index.m3u8"
    good[key] = good[key].replace("PART-HOLD-BACK=0.6", "PART-HOLD-BACK=1.0")
    assert any("differs between renditions" in p for p in checker.renditions_problems(good))
    # a lagging (but real) report is accepted when renditions are rendered at different instants
    lag = _render_all(
        pls, mutate=lambda rs: [type(r)(r.uri, r.last_msn, r.last_part - 1) for r in rs]
    )
    assert checker.renditions_problems(lag, exact_reports=False) == []
    assert checker.renditions_problems(lag) != []


def test_checker_catches_sequence_regressions() -> None:
    renders: list[str] = []
    build([1.0] * 15, renders=renders)
    assert checker.sequence_problems(renders) == []
    assert any("media sequence" in p for p in checker.sequence_problems(renders[::-1]))
    renamed = renders[-1].replace("v0/seg14.m4s", "v0/other.m4s")
    assert any("changed" in p for p in checker.sequence_problems(renders + [renamed]))
    pl = build([1.0] * 3, ended=True)
    reopened = render(pl).replace("#EXT-X-ENDLIST\n", "")
    assert any(
        "ENDLIST disappeared" in p for p in checker.sequence_problems([render(pl), reopened])
    )


def test_checker_catches_bad_delta_updates() -> None:
    pl = build([1.0] * 20, trailing_parts=2)
    full, delta = render(pl), render(pl, skip=True)
    assert checker.delta_problems(full, delta) == []
    wrong_count = delta.replace("SKIPPED-SEGMENTS=6", "SKIPPED-SEGMENTS=5")
    assert any("not the tail" in p for p in checker.delta_problems(full, wrong_count))
    too_much = (
        delta.replace("SKIPPED-SEGMENTS=6", "SKIPPED-SEGMENTS=9")
        .replace("#EXTINF:1.0,\nv0/seg14.m4s\n", "")
        .replace("#EXTINF:1.0,\nv0/seg15.m4s\n", "")
        .replace("#EXTINF:1.0,\nv0/seg16.m4s\n", "")
    )
    problems = checker.delta_problems(full, too_much)
    assert any("CAN-SKIP-UNTIL" in p for p in problems), problems
    ended = build([1.0] * 20, ended=True)
    fake = render(ended).replace("#EXT-X-MAP", "#EXT-X-SKIP:SKIPPED-SEGMENTS=1\n#EXT-X-MAP")
    assert any("ENDLIST" in p for p in checker.delta_problems(render(ended), fake))


def test_checker_catches_bad_multivariant() -> None:
    good = render_multivariant(
        [VariantStream("v/index.m3u8", 1000, "avc1.42e01e", average_bandwidth=900, audio="aud")],
        [AudioRendition("aud", "main", "a/index.m3u8")],
    )
    assert checker.multivariant_problems(good) == []
    assert checker.multivariant_problems(good.replace('AUDIO="aud"', 'AUDIO="x"'))
    assert checker.multivariant_problems(
        good.replace("AVERAGE-BANDWIDTH=900", "AVERAGE-BANDWIDTH=2000")
    )
    assert checker.multivariant_problems(_good()) == ["expected a multivariant playlist"]


def test_first_msn_and_empty_reports_skipped() -> None:
    pl = new_playlist(first_msn=41)
    assert pl.media_sequence == 41
    feed_segment(pl, "v0", 1.0)
    assert pl.segments[0].msn == 41 and pl.media_sequence == 41
    empty = new_playlist("v1")
    text = render(pl, rendition_reports=[rendition_report(empty, "../v1/index.m3u8")])
    assert "#EXT-X-RENDITION-REPORT" not in text
    assert checker.entries(checker.check_media(text))[0].uri == "v0/seg41.m4s"



# --- discontinuities (RFC 8216bis §4.4.4.3, §4.4.3.3, §4.4.4.5) ---------------------------

HEADER = (
    "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n"
    "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.0,HOLD-BACK=3.0,"
    "PART-HOLD-BACK=0.6\n#EXT-X-PART-INF:PART-TARGET=0.2\n"
)


def _store(**kw) -> RenditionStore:
    kw.setdefault("window_segments", 3)
    return RenditionStore("v0", target_duration=1, part_target=PART, **kw)


def _publish(store: RenditionStore, parts: int = 2, *, close: bool = True) -> None:
    """``parts`` parts of the next segment (dated right after the last one), closed if asked."""
    msn = store.playlist.next_msn
    last = store.playlist.segments[-1] if store.playlist.segments else None
    start = T0 if last is None else last.program_date_time + timedelta(seconds=last.duration)
    for index in range(parts):
        pdt = start if index == 0 else None
        store.publish_part(f"{msn}.{index}".encode(), PART, index == 0, program_date_time=pdt)
    if close:
        store.close_segment()


def test_discontinuity_tags_and_new_init_in_a_media_playlist() -> None:
    """discontinuity() closes the in-progress segment; the next one starts with
    EXT-X-DISCONTINUITY and the replacing init's EXT-X-MAP, also while in progress;
    the discontinuity sliding out of the window counts in EXT-X-DISCONTINUITY-SEQUENCE,
    and the old init segment expires with the last segment that used it."""
    now = [0.0]
    store = _store(grace=3.0, clock=lambda: now[0])
    store.set_init(b"init-360p")
    _publish(store)
    _publish(store, 1, close=False)
    store.discontinuity()  # closes seg1 after its one part
    assert [(s.msn, s.duration) for s in store.playlist.segments] == [(0, 0.4), (1, 0.2)]
    store.set_init(b"init-720p")
    assert (store.init, store.init_version) == (b"init-720p", 1)
    assert init_uri(1) == "init.mp4?v=1"
    _publish(store, 1, close=False)
    assert render(store.playlist) == HEADER + (
        "#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        '#EXT-X-MAP:URI="init.mp4"\n'
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-01T12:00:00.000Z\n"
        '#EXT-X-PART:DURATION=0.2,URI="part0.0.m4s",INDEPENDENT=YES\n'
        '#EXT-X-PART:DURATION=0.2,URI="part0.1.m4s"\n'
        "#EXTINF:0.4,\nseg0.m4s\n"
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-01T12:00:00.400Z\n"
        '#EXT-X-PART:DURATION=0.2,URI="part1.0.m4s",INDEPENDENT=YES\n'
        "#EXTINF:0.2,\nseg1.m4s\n"
        "#EXT-X-DISCONTINUITY\n"
        '#EXT-X-MAP:URI="init.mp4?v=1"\n'
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-01T12:00:00.600Z\n"
        '#EXT-X-PART:DURATION=0.2,URI="part2.0.m4s",INDEPENDENT=YES\n'
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part2.1.m4s"\n'
    )
    store.close_segment()
    assert [(s.discontinuity, s.init_uri) for s in store.playlist.segments] == [
        (False, "init.mp4"), (False, "init.mp4"), (True, "init.mp4?v=1"),
    ]
    _publish(store)
    _publish(store)  # the window (3) now starts at seg2, the discontinuity
    assert store.playlist.discontinuity_sequence == 0
    text = render(store.playlist)
    assert (
        '#EXT-X-MEDIA-SEQUENCE:2\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MAP:URI="init.mp4?v=1"\n'
        "#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME"
    ) in text
    assert text.count("#EXT-X-MAP") == 1
    checker.check_media(text)
    _publish(store)  # seg2 slides out: its discontinuity is now counted
    assert store.playlist.discontinuity_sequence == 1
    text = render(store.playlist)
    assert "#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in text
    assert "#EXT-X-DISCONTINUITY\n" not in text
    assert m3u8.loads(text).discontinuity_sequence == 1
    # the first init is served while a retained segment uses it, then expires
    assert store.init_segment(0) == b"init-360p"
    now[0] = 10.0
    _publish(store)
    assert store.segment(1) is None and store.init_segment(0) is None
    assert store.init_segment(1) == b"init-720p"


def test_discontinuity_rules() -> None:
    store = _store()
    store.discontinuity()  # nothing published yet: no tag, but the init may still change
    store.set_init(b"a")
    _publish(store)
    assert not store.playlist.segments[0].discontinuity
    store.set_init(b"a")  # the same bytes: accepted, nothing changes
    with pytest.raises(StoreError, match="already written"):
        store.set_init(b"b")
    store.discontinuity()
    store.discontinuity()  # twice: still one discontinuity
    _publish(store, 1, close=False)
    with pytest.raises(StoreError, match="already written"):
        store.set_init(b"b")  # only before the first part after discontinuity()
    store.close_segment()
    assert [s.discontinuity for s in store.playlist.segments] == [False, True]
    assert store.init_version == 0
    store.end()
    with pytest.raises(PlaylistStateError):
        store.discontinuity()


def test_delta_update_never_skips_a_discontinuity() -> None:
    """A Playlist Delta Update (§6.2.5.1) keeps every listed EXT-X-DISCONTINUITY, so
    a client numbers the Discontinuity Sequence of what it gets without the skipped part."""
    store = RenditionStore("v0", target_duration=1, part_target=PART, window_segments=20)
    store.set_init(b"a")
    for msn in range(12):
        if msn == 3:
            store.discontinuity()
        for index in range(5):
            store.publish_part(b"x", PART, index == 0)
        store.close_segment(T0 + timedelta(seconds=msn))
    assert skipped_segment_count(store.playlist) == 3  # 6 would be allowed without it
    delta = render(store.playlist, skip=True)
    assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n" in delta
    assert '#EXT-X-MAP:URI="init.mp4"\n#EXT-X-DISCONTINUITY\n' in delta
    checker.check_delta(render(store.playlist), delta)
    for _ in range(12):  # the discontinuity slides out: delta updates skip 6 again
        for index in range(5):
            store.publish_part(b"x", PART, index == 0)
        store.close_segment()
    assert skipped_segment_count(store.playlist) == 14


def test_add_rendition_reuse_align_and_end() -> None:
    room = RoomStore(stream_id="s1")
    v0 = room.add_rendition("v0", target_duration=1, part_target=PART)
    v0.set_init(b"a")
    with pytest.raises(StoreError, match="already exists"):
        room.add_rendition("v0", target_duration=1, part_target=PART)
    assert room.add_rendition("v0", target_duration=1, part_target=PART, reuse=True) is v0
    for _ in range(2):
        _publish(v0)
    v0.discontinuity()
    v1 = room.add_rendition("v1", target_duration=1, part_target=PART, align_with="v0")
    assert (v1.playlist.next_msn, v1.playlist.discontinuity_sequence) == (2, 1)
    v1.set_init(b"b")
    _publish(v0)
    _publish(v1)
    assert "#EXT-X-MEDIA-SEQUENCE:2\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n" in room.render_media("v1")
    assert "#EXT-X-DISCONTINUITY\n" not in room.render_media("v1")
    with pytest.raises(StoreError, match="no rendition 'v9'"):
        room.add_rendition("v2", target_duration=1, part_target=PART, align_with="v9")
    _publish(v1, 1, close=False)
    room.end_rendition("v1")  # closes its in-progress segment, then ENDLIST
    assert v1.playlist.ended and [s.msn for s in v1.playlist.segments] == [2, 3]
    assert not v0.playlist.ended
    with pytest.raises(StoreError):
        room.end_rendition("v9")
