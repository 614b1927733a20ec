"""LL-HLS bridge: turns a room's WebRTC media into Low-Latency HLS (RFC 8216bis).

- :mod:`hls_bridge.encoders`: H.264 encoder probing and low-latency encoder setup.
- :mod:`hls_bridge.model`: I/O-free state of one rendition's media playlist.
- :mod:`hls_bridge.playlist`: the playlist writer (media, delta update, multivariant)
  and blocking-reload request validation.
"""
