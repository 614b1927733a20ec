"""Static pages (broadcast studio, watch page) served by signaling."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
