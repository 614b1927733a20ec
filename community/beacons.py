"""Player quality-of-experience beacons: what ``POST /api/beacons`` accepts (pure validation).

A player sends its beacons in batches (``navigator.sendBeacon``, W3C Beacon §3.1, with a
``Blob`` of type ``application/json``): ``{"beacons": [Beacon, ...]}``, 1 to
:data:`MAX_BATCH` of them.  Every field has a range; a value outside it, a field that is
not listed, a wrong JSON type (strict: ``"5"`` is not a number, ``true`` is not a count) or
a non-finite number rejects the **whole batch** (422), so nothing absurd is stored.

A beacon describes one playback session (``session``: an id the player draws at random
when playback starts) of one channel (``channel``: the room name) on one ``tier``:

==============  ==========================  ==================================================
field           range                        meaning
==============  ==========================  ==================================================
``session``     ``^[A-Za-z0-9_-]{8,64}$``     the player's playback session id
``channel``     a room name                   ``common.names.ROOM_RE``
``tier``        ``webrtc`` / ``llhls``        how the player plays
``event``       see :data:`EVENTS`            why the beacon was sent
``join_ms``     0 – 120 000 ms                from play requested to the first frame shown
``latency_ms``  0 – 120 000 ms                playback latency now (WebRTC: getStats
                                              ``jitterBufferDelay``/``jitterBufferEmittedCount``
                                              plus half ``currentRoundTripTime``; LL-HLS: now
                                              minus the ``EXT-X-PROGRAM-DATE-TIME`` of the
                                              frame shown)
``stalls``      0 – 100 000                   stalls so far in the session (cumulative)
``stall_ms``    0 – 86 400 000 ms             time spent in those stalls, ms (cumulative)
``switches``    0 – 100 000                   rendition (resolution) switches so far (cumulative)
``height``      0 – 4320 px                   the height of the rendition playing now
``error``       at most 200 characters        an error's short text (event ``error``)
==============  ==========================  ==================================================

Counters are cumulative over the session so that a lost beacon loses nothing: the last
beacon of a session holds its totals.  ``stall_ms`` counts ended stalls only; ``stalls`` =
0 with ``stall_ms`` > 0 is inconsistent and rejected.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.names import ROOM_RE

MAX_BATCH = 50
"""Beacons per request at most."""
SESSION_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
MAX_TIME_MS = 120_000.0
"""``join_ms`` and ``latency_ms`` above two minutes are not a measurement but a bug."""
MAX_COUNT = 100_000
MAX_STALL_MS = 86_400_000.0
"""A day of stalling."""
MAX_HEIGHT = 4320
"""8K UHD (ITU-R BT.2020)."""
MAX_ERROR_CHARS = 200

Tier = Literal["webrtc", "llhls"]
TIERS: tuple[Tier, ...] = ("webrtc", "llhls")
Event = Literal["join", "heartbeat", "stall", "switch", "error", "end"]
EVENTS: tuple[str, ...] = ("join", "heartbeat", "stall", "switch", "error", "end")
"""``join``: playback started (carries ``join_ms``); ``heartbeat``: periodic (latency and
totals); ``stall``: a stall ended; ``switch``: the rendition changed; ``error``: playback
failed (``error``); ``end``: the session ended (page hidden or closed)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Beacon(BaseModel):
    """One quality-of-experience report of a playback session (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    session: str = Field(pattern=SESSION_PATTERN, description="the player's playback session id")
    channel: str = Field(
        min_length=1, max_length=64, pattern=ROOM_RE.pattern, description="room name"
    )
    tier: Tier
    event: Event
    join_ms: float | None = Field(
        default=None,
        ge=0,
        le=MAX_TIME_MS,
        allow_inf_nan=False,
        description="time to first frame, ms",
    )
    latency_ms: float | None = Field(
        default=None, ge=0, le=MAX_TIME_MS, allow_inf_nan=False, description="playback latency, ms"
    )
    stalls: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="stalls so far (cumulative)"
    )
    stall_ms: float | None = Field(
        default=None,
        ge=0,
        le=MAX_STALL_MS,
        allow_inf_nan=False,
        description="time stalled so far, ms (cumulative)",
    )
    switches: int | None = Field(
        default=None, ge=0, le=MAX_COUNT, description="rendition switches so far (cumulative)"
    )
    height: int | None = Field(
        default=None, ge=0, le=MAX_HEIGHT, description="rendition height, px"
    )
    error: str | None = Field(default=None, max_length=MAX_ERROR_CHARS, description="error text")

    @field_validator("error")
    @classmethod
    def _error(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("control characters are not allowed")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Beacon:
        if self.stalls == 0 and self.stall_ms:
            raise ValueError("stall_ms > 0 with stalls = 0")
        return self


class BeaconBatch(BaseModel):
    """``POST /api/beacons`` body: 1 to :data:`MAX_BATCH` beacons."""

    model_config = ConfigDict(extra="forbid")

    beacons: list[Beacon] = Field(min_length=1, max_length=MAX_BATCH)


class BeaconsAccepted(BaseModel):
    """``202``: how many beacons were queued for storage."""

    accepted: int
