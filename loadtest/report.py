"""Fan-out benchmark figures: per-window metrics, target check, markdown tables, PNG plot, py-spy summary."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {
    "subscribers": 100,  # with loss <= 1 % and median fps >= 29
    "ratio": 25.0,  # forward max N / relay saturation N
    "us_per_packet": 15.0,
    "latency_p50_ms": 60.0,  # at 10 subscribers
    "latency_p95_ms": 100.0,
    "join_p95_ms": 500.0,
    "mem_per_subscriber_kb": 1024.0,
}


# ----------------------------------------------------------------- metrics
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) or None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms_percentiles(values: list[float], digits: int = 1) -> dict[str, float | int | None]:
    """``{"n", "p50", "p95", "max"}`` of ``values`` (seconds) in ms, rounded to
    ``digits``; interpolated quantiles (``statistics.quantiles``, inclusive); None when empty."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"n": len(ordered), "p50": round(q[49] * 1000, digits),
            "p95": round(q[94] * 1000, digits), "max": round(ordered[-1] * 1000, digits)}


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Sample:
    """Everything read at one instant of a step."""

    t: float
    sfu_cpu_s: float
    sfu_sys_s: float
    sfu_rss: int
    sfu_drops: int
    sub_drops: int
    pub_cpu_s: float
    subs: list[dict[str, Any]]  # per subscriber, across pools
    pool_cpu_s: float
    machine_cpu_s: float
    estimator_cpu_s: float = 0.0
    """The SFU's bandwidth estimator processes (sfu.estimator_main), not counted in sfu_cpu_s."""


def window_metrics(a: Sample, b: Sample, latency: list[tuple[float, float]], baseline: dict[str, Any] | None,
                   joined: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare two samples of one step (see the module docstring for the definitions)."""
    dt = b.t - a.t
    prev = {(s["pool"], s["index"]): s for s in a.subs}
    expected = received = repaired = delivered = 0
    video_expected = video_received = 0
    fps: list[float] = []
    worst_loss = 0.0
    for s in b.subs:
        p = prev.get((s["pool"], s["index"]))
        if p is None or not s["ok"]:
            continue
        sub_expected = sub_received = 0
        for kind in ("video", "audio"):
            e = s[kind]["expected"] - p[kind]["expected"]
            r = s[kind]["received"] - p[kind]["received"]
            d = s[kind]["duplicates"] - p[kind]["duplicates"]
            repaired += s[kind]["late"] - p[kind]["late"]
            delivered += r + d
            sub_expected += e
            sub_received += min(r, e)
            if kind == "video":
                video_expected += e
                video_received += min(r, e)
        # a rate-limited subscriber's relay dropped what the SFU sent beyond the link's rate
        delivered += s.get("relay_dropped", 0) - p.get("relay_dropped", 0)
        expected += sub_expected
        received += sub_received
        if sub_expected:
            worst_loss = max(worst_loss, 100.0 * (sub_expected - sub_received) / sub_expected)
        fps.append((s["frames"] - p["frames"]) / dt)
    n = len(fps)
    cpu = b.sfu_cpu_s - a.sfu_cpu_s
    # What the SFU sent = what arrived (unique + duplicates) + what the kernel dropped at the
    # subscribers' sockets: exact on loopback, and blind to packets the SFU never received.
    sub_drops = b.sub_drops - a.sub_drops
    forwarded = delivered + sub_drops
    inside = [ms for t, ms in latency if a.t <= t <= b.t]
    out: dict[str, Any] = {
        "n": n,
        "window_s": round(dt, 2),
        "sfu_cpu_pct": round(100.0 * cpu / dt, 1),
        "sfu_kernel_cpu_pct": round(100.0 * (b.sfu_sys_s - a.sfu_sys_s) / dt, 1),
        "forwarded_packets": forwarded,
        "forwarded_pps": round(forwarded / dt, 1),
        "us_per_packet": rounded(1e6 * cpu / forwarded, 2) if forwarded else None,
        "loss_pct": rounded(100.0 * (expected - received) / expected, 3) if expected else None,
        "video_loss_pct": rounded(100.0 * (video_expected - video_received) / video_expected, 3)
        if video_expected else None,
        "worst_subscriber_loss_pct": round(worst_loss, 3),
        "repaired_packets": repaired,
        "fps_median": rounded(statistics.median(fps), 2) if fps else None,
        "fps_min": rounded(min(fps), 2) if fps else None,
        "latency_samples": len(inside),
        "latency_p50_ms": rounded(percentile(inside, 50)),
        "latency_p95_ms": rounded(percentile(inside, 95)),
        "sfu_rss_mb": round(b.sfu_rss / 2**20, 1),
        "sfu_udp_drops": b.sfu_drops - a.sfu_drops,
        "subscriber_udp_drops": sub_drops,
        "subscriber_cpu_pct": round(100.0 * (b.pool_cpu_s - a.pool_cpu_s) / dt, 1),
        "publisher_cpu_pct": round(100.0 * (b.pub_cpu_s - a.pub_cpu_s) / dt, 1),
        "machine_cpu_pct": round(100.0 * (b.machine_cpu_s - a.machine_cpu_s) / dt, 1),
    }
    estimator = b.estimator_cpu_s - a.estimator_cpu_s
    out["estimator_cpu_pct"] = round(100.0 * estimator / dt, 1)
    out["us_per_packet_with_estimator"] = rounded(1e6 * (cpu + estimator) / forwarded, 2) if forwarded else None
    ours = cpu + estimator + (b.pool_cpu_s - a.pool_cpu_s) + (b.pub_cpu_s - a.pub_cpu_s)
    out["other_processes_cpu_pct"] = round(100.0 * ((b.machine_cpu_s - a.machine_cpu_s) - ours) / dt, 1)
    if baseline and forwarded:
        extra = cpu - baseline["sfu_cpu_pct"] / 100.0 * dt
        out["us_per_packet_marginal"] = round(1e6 * extra / forwarded, 2)
    if baseline and n:
        out["mem_per_subscriber_kb"] = round((b.sfu_rss - baseline["sfu_rss"]) / n / 1024, 1)
    decoded_join = [(j["t_first_decoded"] - j["t_post"]) * 1000 for j in joined
                    if j.get("t_first_decoded") and j.get("t_post")]
    key_join = [(j["t_first_keyframe"] - j["t_post"]) * 1000 for j in joined
                if j.get("t_first_keyframe") and j.get("t_post")]
    conn = [(j["t_connected"] - j["t_post"]) * 1000 for j in joined if j.get("t_connected") and j.get("t_post")]
    out.update({
        "joined": len(joined),
        "join_failed": sum(1 for j in joined if j.get("error")),
        "join_decoded_samples": len(decoded_join),
        "join_decoded_p50_ms": rounded(percentile(decoded_join, 50)),
        "join_decoded_p95_ms": rounded(percentile(decoded_join, 95)),
        "join_keyframe_p50_ms": rounded(percentile(key_join, 50)),
        "join_keyframe_p95_ms": rounded(percentile(key_join, 95)),
        "join_connected_p50_ms": rounded(percentile(conn, 50)),
    })
    return out


def viewer_classes(a: Sample, b: Sample, latency: list[tuple[int, int, float, float]],
                   baseline: dict[str, Any] | None, joined: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`window_metrics` per viewer class — ``unlimited`` and ``limited`` (behind a
    rate-limited link, ``limit_bps``) — with ``latency`` as ``(pool, index, t, ms)``, plus
    the picture size each class ends on (from the last key frame each subscriber got:
    ``{"WxH": count}``) and, for subscribers whose key frames changed size, the time from
    connecting to the last change (``adapt_s``: how long the SFU took to settle on a layer)."""
    out: dict[str, Any] = {}
    for name, wanted in (("unlimited", False), ("limited", True)):
        keys = {(s["pool"], s["index"]) for s in b.subs if bool(s.get("limit_bps")) == wanted}
        if not keys:
            continue

        def only(sample: Sample, keys: set[tuple[int, int]] = keys) -> Sample:
            return replace(sample, subs=[s for s in sample.subs if (s["pool"], s["index"]) in keys])

        inside = [(t, ms) for pool, index, t, ms in latency if (pool, index) in keys]
        metrics = window_metrics(only(a), only(b), inside, baseline, [])
        sizes: dict[str, int] = {}
        adapt: list[float] = []
        for sub in only(b).subs:
            frames = sub.get("keyframe_sizes") or []
            if frames:
                size = f"{frames[-1][1]}x{frames[-1][2]}"
                sizes[size] = sizes.get(size, 0) + 1
            if len(frames) > 1 and sub.get("t_connected"):
                adapt.append(frames[-1][0] - sub["t_connected"])
        out[name] = {k: metrics[k] for k in ("n", "fps_median", "fps_min", "loss_pct", "video_loss_pct",
                                             "latency_samples", "latency_p50_ms", "latency_p95_ms")}
        out[name]["sizes"] = sizes
        out[name]["adapt_s_p50"] = rounded(percentile(adapt, 50))
        out[name]["adapt_s_max"] = rounded(max(adapt)) if adapt else None
    return out


# ------------------------------------------------------------------ summary
def _step(result: dict[str, Any] | None, n: int) -> dict[str, Any] | None:
    for step in (result or {}).get("steps", []):
        if step["target_n"] == n:
            return step
    return None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Headline figures and which targets are met (``None`` = not measured in this run)."""
    forward, relay = results.get("forward"), results.get("relay")
    out: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    if forward:
        good = [s for s in forward["steps"] if s.get("meets_targets")]
        best = max(good, key=lambda s: s["n"]) if good else None
        out["forward_max_n_at_targets"] = best["n"] if best else 0
        checks["subscribers"] = {"value": out["forward_max_n_at_targets"],
                                 "met": out["forward_max_n_at_targets"] >= TARGETS["subscribers"]}
        ref = _step(forward, 100) or best
        if ref is not None and ref.get("us_per_packet") is not None:
            checks["us_per_packet"] = {"n": ref["n"], "value": ref["us_per_packet"],
                                       "marginal": ref.get("us_per_packet_marginal"),
                                       "per_step": {s["n"]: s.get("us_per_packet") for s in forward["steps"]
                                                    if s.get("meets_targets")},
                                       "met": ref["us_per_packet"] <= TARGETS["us_per_packet"]}
            if ref["us_per_packet"] > 0:
                # 1.5 Mbps video ≈ 1.5e6 / 8 / ~1100 B + 50 audio packets per viewer per second
                pps = ref["forwarded_pps"] / max(1, ref["n"])
                out["projected_viewers_per_core"] = round(1e6 / (ref["us_per_packet"] * pps))
        ten = _step(forward, 10)
        if ten is not None and ten.get("latency_p50_ms") is not None:
            checks["latency"] = {"n": ten["n"], "p50": ten["latency_p50_ms"], "p95": ten["latency_p95_ms"],
                                 "met": ten["latency_p50_ms"] <= TARGETS["latency_p50_ms"]
                                 and ten["latency_p95_ms"] <= TARGETS["latency_p95_ms"]}
        joins = [s for s in forward["steps"] if s.get("join_probe_p95_ms") is not None and s.get("meets_targets")]
        if joins:
            worst = max(joins, key=lambda s: s["join_probe_p95_ms"])
            checks["join_p95_ms"] = {
                "measure": "WHEP POST -> first decoded frame, probe viewers, at each N within capacity",
                "worst_step_n": worst["target_n"], "value": worst["join_probe_p95_ms"],
                "per_step": {s["target_n"]: s["join_probe_p95_ms"] for s in joins},
                "met": worst["join_probe_p95_ms"] <= TARGETS["join_p95_ms"]}
        mem = [s for s in forward["steps"] if s.get("mem_per_subscriber_kb") is not None and s["n"] >= 10]
        if mem:
            big = max(mem, key=lambda s: s["n"])
            checks["mem_per_subscriber_kb"] = {"n": big["n"], "value": big["mem_per_subscriber_kb"],
                                               "met": big["mem_per_subscriber_kb"] <= TARGETS["mem_per_subscriber_kb"]}
    if relay:
        out["relay_saturated_at"] = relay.get("saturated_at")
        good = [s["n"] for s in relay["steps"] if s.get("meets_targets")]
        out["relay_max_n_at_targets"] = max(good) if good else 0
        out["relay_fails_targets_at"] = relay.get("fails_targets_at")
    if forward and relay and out.get("relay_saturated_at"):
        ratio = out["forward_max_n_at_targets"] / out["relay_saturated_at"]
        out["ratio_vs_relay_saturation"] = round(ratio, 1)
        checks["ratio"] = {"value": out["ratio_vs_relay_saturation"], "met": ratio >= TARGETS["ratio"]}
    if forward and relay and out.get("relay_max_n_at_targets"):
        out["ratio_at_delivery_targets"] = round(out["forward_max_n_at_targets"] / out["relay_max_n_at_targets"], 1)
    out["checks"] = checks
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(result: dict[str, Any]) -> str:
    """One markdown table for a mode's steps."""
    head = ("| N | SFU CPU % (kernel) | µs/pkt total / marginal | estimator CPU % (µs/pkt with it) "
            "| fwd pkt/s | fps median / min | loss % "
            "| g2g p50 / p95 ms (samples) | join p50 / p95 ms (probes) | ramp join p95 ms | RSS MB | KB/sub "
            "| subs CPU % | other CPU % | pub. kbps |")
    rows = [head, "|" + "---|" * 15]
    base = result.get("baseline") or {}
    if base:
        rows.append(f"| 0 | {_fmt(base.get('sfu_cpu_pct'))} | – | – | – | – | – | – | – | – | {_fmt(base.get('sfu_rss_mb'))} "
                    f"| – | – | – | {_fmt((base.get('publisher') or {}).get('video_kbps'), 0)} |")
    for s in result.get("steps", []):
        other = s.get("other_processes_cpu_pct")
        rows.append(
            f"| {s['n']} | {_fmt(s['sfu_cpu_pct'])} ({_fmt(s.get('sfu_kernel_cpu_pct'))}) "
            f"| {_fmt(s.get('us_per_packet'))} / {_fmt(s.get('us_per_packet_marginal'))} "
            f"| {_fmt(s.get('estimator_cpu_pct'))} ({_fmt(s.get('us_per_packet_with_estimator'))}) "
            f"| {_fmt(s['forwarded_pps'], 0)} | {_fmt(s.get('fps_median'))} / {_fmt(s.get('fps_min'))} "
            f"| {_fmt(s.get('loss_pct'), 2)} "
            f"| {_fmt(s.get('latency_p50_ms'), 0)} / {_fmt(s.get('latency_p95_ms'), 0)} ({s['latency_samples']}) "
            f"| {_fmt(s.get('join_probe_p50_ms'), 0)} / {_fmt(s.get('join_probe_p95_ms'), 0)} "
            f"({s.get('join_probes', 0)}) | {_fmt(s.get('join_keyframe_p95_ms'), 0)} | {_fmt(s['sfu_rss_mb'])} "
            f"| {_fmt(s.get('mem_per_subscriber_kb'), 0)} | {_fmt(s['subscriber_cpu_pct'], 0)} "
            f"| {_fmt(None if other is None else max(0.0, other), 0)} "
            f"| {_fmt((s.get('publisher') or {}).get('video_kbps'), 0)} |")
    return "\n".join(rows)


def markdown(results: dict[str, Any]) -> str:
    parts = []
    for mode in ("forward", "relay"):
        if mode in results:
            parts.append(f"### {mode}\n\n{table(results[mode])}\n")
    summary = results.get("summary") or {}
    lines = [f"- {k}: {v}" for k, v in summary.items() if k != "checks"]
    for name, check in (summary.get("checks") or {}).items():
        verdict = "met" if check.get("met") else "MISSED"
        detail = ", ".join(f"{k}={v}" for k, v in check.items() if k != "met")
        lines.append(f"- target {name}: {verdict} ({detail})")
    parts.append("\n".join(lines))
    return "\n".join(parts)


# -------------------------------------------------------------------- plot
def plot(results: dict[str, Any], path: Path) -> str | None:
    """SFU CPU % and median fps against N for both modes (matplotlib, else OpenCV)."""
    series = {m: results[m]["steps"] for m in ("forward", "relay") if results.get(m, {}).get("steps")}
    if not series:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_cv2(series, path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, steps in series.items():
        ns = [s["n"] for s in steps]
        axes[0].plot(ns, [s["sfu_cpu_pct"] for s in steps], marker="o", label=mode)
        axes[1].plot(ns, [s.get("fps_median") or 0 for s in steps], marker="o", label=mode)
    axes[0].set(xlabel="subscribers", ylabel="SFU CPU % of one core", title="SFU CPU")
    axes[1].set(xlabel="subscribers", ylabel="median delivered fps", title="Delivered frame rate")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _plot_cv2(series: dict[str, list[dict[str, Any]]], path: Path) -> str | None:
    import cv2

    width, height, margin = 560, 360, 50
    colors = {"forward": (200, 90, 20), "relay": (30, 30, 210)}
    panels = []
    for key, title in (("sfu_cpu_pct", "SFU CPU % of one core"), ("fps_median", "median delivered fps")):
        img = np.full((height, width, 3), 255, np.uint8)
        points = {m: [(s["n"], s.get(key) or 0.0) for s in steps] for m, steps in series.items()}
        xmax = max(max(n for n, _ in p) for p in points.values()) or 1
        ymax = max(max(v for _, v in p) for p in points.values()) * 1.1 or 1

        def xy(n: float, v: float, xmax: float = xmax, ymax: float = ymax) -> tuple[int, int]:
            return (int(margin + n / xmax * (width - 2 * margin)),
                    int(height - margin - v / ymax * (height - 2 * margin)))

        cv2.line(img, xy(0, 0), xy(xmax, 0), (0, 0, 0), 1)
        cv2.line(img, xy(0, 0), xy(0, ymax), (0, 0, 0), 1)
        for i in range(5):
            v = ymax * i / 4
            cv2.putText(img, f"{v:.0f}", (5, xy(0, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
            n = xmax * i / 4
            cv2.putText(img, f"{n:.0f}", (xy(n, 0)[0] - 8, height - margin + 15), cv2.FONT_HERSHEY_SIMPLEX,
                        0.35, (0, 0, 0), 1)
        for row, (mode, pts) in enumerate(points.items()):
            color = colors.get(mode, (0, 120, 0))
            coords = [xy(n, v) for n, v in pts]
            for a, b in zip(coords, coords[1:], strict=False):
                cv2.line(img, a, b, color, 2, cv2.LINE_AA)
            for c in coords:
                cv2.circle(img, c, 4, color, -1, cv2.LINE_AA)
            cv2.putText(img, mode, (width - 120, 30 + 18 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1)
        cv2.putText(img, title, (margin, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
        cv2.putText(img, "subscribers", (width // 2 - 40, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1)
        panels.append(img)
    return str(path) if cv2.imwrite(str(path), np.hstack(panels)) else None


# ------------------------------------------------------------------ py-spy
def summarize_collapsed(text: str, top: int = 25) -> dict[str, list[tuple[float, str]]]:
    """Self and inclusive time shares per function from py-spy ``--format raw`` output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"self": [], "inclusive": []}

    def share(counter: Counter[str]) -> list[tuple[float, str]]:
        return [(round(100.0 * c / total, 1), name) for name, c in counter.most_common(top)]

    return {"samples": [(float(total), "samples")], "self": share(own), "inclusive": share(inclusive)}
