"""Run ``relaycast serve`` with every media codec entry point counted.

Usage (from tests/sfu/test_no_codec_in_sfu.py)::

    python tests/sfu/codec_audit.py --port P --stream-key K --report FILE

Before the service starts, this wraps

* ``aiortc.codecs.get_decoder`` / ``get_encoder`` and every aiortc module that
  imported them by name (``aiortc.rtcrtpreceiver.get_decoder``,
  ``aiortc.rtcrtpsender.get_encoder``);
* ``aiortc.rtcrtpreceiver.decoder_worker`` (the receiver's decoder thread body);
* ``av.CodecContext.create`` (every PyAV encoder/decoder aiortc builds goes
  through it, whether the caller wrote ``av.CodecContext`` or imported the name);
* ``threading.Thread.start``, to list the name of every thread ever started.

On SIGTERM ``relaycast serve`` shuts down cleanly; the counts and thread names
are then written to FILE as JSON.  The service runs as
``relaycast serve --host 127.0.0.1 --port P --stream-key K --ice-gather 127.0.0.1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter
from typing import Any

COUNTS: Counter[str] = Counter()
CODEC_CONTEXTS: list[str] = []
THREADS: list[str] = []


def _counted(name: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        COUNTS[name] += 1
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    import aiortc.codecs
    import aiortc.rtcrtpreceiver
    import aiortc.rtcrtpsender
    import av

    get_decoder = _counted("get_decoder", aiortc.codecs.get_decoder)
    get_encoder = _counted("get_encoder", aiortc.codecs.get_encoder)
    aiortc.codecs.get_decoder = get_decoder
    aiortc.codecs.get_encoder = get_encoder
    # Modules that did `from .codecs import get_decoder` hold their own reference.
    for module in list(sys.modules.values()):
        if module is None or not getattr(module, "__name__", "").startswith(("aiortc", "sfu", "signaling")):
            continue
        if getattr(module, "get_decoder", None) is get_decoder.__wrapped__:
            module.get_decoder = get_decoder
        if getattr(module, "get_encoder", None) is get_encoder.__wrapped__:
            module.get_encoder = get_encoder
    assert aiortc.rtcrtpreceiver.get_decoder is get_decoder
    assert aiortc.rtcrtpsender.get_encoder is get_encoder
    aiortc.rtcrtpreceiver.decoder_worker = _counted("decoder_worker", aiortc.rtcrtpreceiver.decoder_worker)

    create = av.CodecContext.create

    def create_counted(*args: Any, **kwargs: Any) -> Any:
        COUNTS["CodecContext.create"] += 1
        CODEC_CONTEXTS.append(" ".join(str(a) for a in args))
        return create(*args, **kwargs)

    av.CodecContext.create = staticmethod(create_counted)

    start = threading.Thread.start

    def thread_start(self: threading.Thread) -> None:
        THREADS.append(self.name)
        start(self)

    threading.Thread.start = thread_start  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream-key", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    install()
    from relaycast import cli

    rc = 1
    try:
        rc = cli.main([
            "--log-level", "warning", "serve", "--host", "127.0.0.1", "--port", str(args.port),
            "--stream-key", args.stream_key, "--ice-gather", "127.0.0.1",
        ])
    finally:
        # Threads alive now were started through Thread.start too, unless they
        # predate install() (the main thread): list them as well.
        names = sorted(set(THREADS) | {t.name for t in threading.enumerate()})
        with open(args.report, "w") as f:
            json.dump({"rc": rc, "counts": dict(COUNTS), "codec_contexts": CODEC_CONTEXTS,
                       "threads": names}, f, indent=2)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
