"""``python -m loadtest.chat_store_bench`` runs end to end on a small load (SQLite)."""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtest import chat_store_bench


def test_chat_store_bench_writes_its_table(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    chat_store_bench.add_arguments(parser)
    out = tmp_path / "bench.md"
    args = parser.parse_args(
        [
            "--messages",
            "600",
            "--baseline-messages",
            "20",
            "--batch-sizes",
            "1,500",
            "--rooms",
            "2",
            "--out",
            str(out),
        ]
    )
    assert chat_store_bench.main(args) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| SQLite")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "500"]
    assert [row.split("|")[7].strip() for row in rows] == ["20", "2"]  # INSERT statements
