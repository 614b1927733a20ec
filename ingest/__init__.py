"""Ingest for encoders that do not speak WHIP: RTMP (and, later, SRT) publishing endpoints
that run in an ingest process of their own, never in a forwarding one (docs/ingest.md)."""
