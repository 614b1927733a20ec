"""What tests need to start the real service: the demo room's stream key and a
`SignalingConfig` on 127.0.0.1 with a free port.

Import as ``from tests.services import STREAM_KEY, make_config`` (conftest.py holds only
fixtures and hooks; pytest loads it itself, a test never imports it).
"""

from __future__ import annotations

from signaling.config import SignalingConfig

STREAM_KEY = "sk_test_" + "x" * 24
"""The stream key of the demo room ``demo`` of every service `make_config` configures."""


def make_config(**overrides: object) -> SignalingConfig:
    """A `SignalingConfig` from an empty environment: ``host`` 127.0.0.1, ``port`` 0 (a
    free one), ``demo_stream_key`` `STREAM_KEY`; ``overrides`` are further fields."""
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "demo_stream_key": STREAM_KEY}
    values.update(overrides)
    return SignalingConfig.from_env({}, **values)
