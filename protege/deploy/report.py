"""``protege-deploy report <run_dir>``: the summary and plots of a deployment's cycle log.

Reads ``<run_dir>/deploy.jsonl`` (see :class:`~protege.control.cyclelog.CycleLog`), prints a summary,
writes it to ``report.json`` and plots ``report.png``: the cycle period and its jitter, the
observation-to-action latency of every chunk, and the commanded vs measured TCP position.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..control.cyclelog import read_log


def _pct(x, qs=(50, 99)) -> dict[str, float]:
    x = np.asarray(x, float)
    if len(x) == 0:
        return {**{f"p{q}": float("nan") for q in qs}, "max": float("nan")}
    return {**{f"p{q}": float(np.percentile(x, q)) for q in qs}, "max": float(x.max())}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of a run: cycles, period jitter (|period - dt|, ms; a period across cycles skipped
    after an overrun counts as that many dt) and lateness of each cycle (ms),
    cycles skipped after overruns, observation-to-action latency per chunk (ms), late actions dropped per minute, clips, the
    largest commanded TCP speed, tracking error (measured TCP one cycle after it was commanded,
    mm), and the episodes' outcomes."""
    cycles = [r for r in records if r.get("type") == "cycle"]
    episodes = [r for r in records if r.get("type") == "episode"]
    stops = [r for r in records if r.get("type") == "stop"]
    jitter, late, track = [], [], []
    dt, skipped = None, 0
    by_ep: dict[int, list[dict]] = {}
    for c in cycles:
        by_ep.setdefault(c["episode"], []).append(c)
    for cs in by_ep.values():
        if len(cs) > 1:  # the schedule's period; cycles skipped after an overrun (k jumps) are not in the log
            dt = dt or (cs[1]["t"] - cs[0]["t"]) / (cs[1]["k"] - cs[0]["k"])
        for a, b in zip(cs, cs[1:]):
            skipped += b["k"] - a["k"] - 1
            jitter.append(abs((b["wake"] - a["wake"]) - (b["k"] - a["k"]) * dt))
            if b["k"] == a["k"] + 1:
                track.append(np.linalg.norm(np.subtract(b["meas"], a["cmd"])))
        late += [c["wake"] - c["t"] for c in cs]
    latencies = [c["chunk"]["t_end"] - c["chunk"]["t_obs"] for c in cycles if c.get("chunk")]
    minutes = sum(e["duration_s"] for e in episodes) / 60.0
    dropped = sum(e["dropped"] for e in episodes)
    clips: dict[str, int] = {}
    for e in episodes:
        for k, v in e["clips"].items():
            clips[k] = clips.get(k, 0) + v
    ms = lambda d: {k: round(v * 1e3, 3) for k, v in d.items()}  # noqa: E731
    interventions = _interventions(by_ep, dt) if any("human" in c for c in cycles) else None
    return {
        "episodes": len(episodes),
        "successes": sum(bool(e["success"]) for e in episodes),
        "stops": {s["reason"]: s["message"] for s in stops},
        "cycles": len(cycles),
        "skipped_cycles": skipped,
        "dt_ms": round(dt * 1e3, 3) if dt else None,
        "period_jitter_ms": ms(_pct(jitter)) if dt else None,
        "cycle_lateness_ms": ms(_pct(late)),
        "obs_to_action_latency_ms": ms(_pct(latencies)),
        "chunks": sum(e["chunks"] for e in episodes),
        "dropped_actions": dropped,
        "dropped_per_minute": round(dropped / minutes, 3) if minutes else None,
        "clips": clips,
        "max_cmd_speed": max((c["cmd_speed"] for c in cycles), default=None),
        "tracking_error_mm": ms(_pct(track)),
        "minutes": round(minutes, 3),
        "interventions": interventions,
    }


def _interventions(by_ep: dict[int, list[dict]], dt: float | None) -> dict[str, Any]:
    """Per episode, the operator's take-overs: when each began (s from the episode's first cycle)
    and how long it lasted (s), from the cycles' ``human`` flags."""
    per = {}
    for e, cs in by_ep.items():
        segs, start = [], None
        for c in cs:
            if c.get("human") and start is None:
                start = c
            elif not c.get("human") and start is not None:
                segs.append({"start_s": round(start["t"] - cs[0]["t"], 3), "length_s": round(c["t"] - start["t"], 3)})
                start = None
        if start is not None:
            segs.append({"start_s": round(start["t"] - cs[0]["t"], 3), "length_s": round(cs[-1]["t"] - start["t"] + (dt or 0), 3)})
        human = sum(bool(c.get("human")) for c in cs)
        per[e] = {"count": len(segs), "segments": segs, "human_steps": human, "steps": len(cs)}
    lengths = [g["length_s"] for p in per.values() for g in p["segments"]]
    return {"episodes": per, "total": len(lengths), "per_episode": round(len(lengths) / max(1, len(per)), 3),
            "mean_length_s": round(float(np.mean(lengths)), 3) if lengths else None,
            "human_fraction": round(sum(p["human_steps"] for p in per.values()) / max(1, sum(p["steps"] for p in per.values())), 3)}


def plot(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Three panels: cycle periods, per-chunk latency, commanded vs measured TCP (first episode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = [r for r in records if r.get("type") == "cycle"]
    fig, ax = plt.subplots(3, 1, figsize=(9, 9))
    if cycles:
        t0 = cycles[0]["wake"]
        by_ep: dict[int, list[dict]] = {}
        for c in cycles:
            by_ep.setdefault(c["episode"], []).append(c)
        for cs in by_ep.values():
            w = np.array([c["wake"] for c in cs])
            if len(w) > 1:
                ax[0].plot(w[1:] - t0, np.diff(w) * 1e3, ".", ms=2, color="C0")
        ax[0].set(xlabel="time (s)", ylabel="cycle period (ms)", title="control cycle period")
        chunks = [c for c in cycles if c.get("chunk")]
        ax[1].plot([c["wake"] - t0 for c in chunks], [(c["chunk"]["t_end"] - c["chunk"]["t_obs"]) * 1e3 for c in chunks],
                   ".", ms=3, color="C1")
        ax[1].set(xlabel="time (s)", ylabel="latency (ms)", title="observation to action chunk")
        first = by_ep[min(by_ep)]
        t = np.array([c["t"] for c in first]) - first[0]["t"]
        cmd, meas = np.array([c["cmd"] for c in first]), np.array([c["meas"] for c in first])
        dt = t[1] - t[0] if len(t) > 1 else 0.1
        for i, axis in enumerate("xyz"):
            ax[2].plot(t + dt, cmd[:, i], "-", color=f"C{i}", label=f"{axis} commanded (target time)")
            ax[2].plot(t, meas[:, i], ":", color=f"C{i}", label=f"{axis} measured")
        ax[2].set(xlabel="episode time (s)", ylabel="TCP (m)", title="commanded vs measured TCP, first episode")
        ax[2].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_summary(s: dict[str, Any]) -> str:
    if not s["cycles"]:
        return "\n".join([f"episodes {s['episodes']}, no control cycle ran"] +
                          [f"stopped: {k}: {v}" for k, v in s["stops"].items()])
    j, lat, tr = s["period_jitter_ms"] or {}, s["obs_to_action_latency_ms"], s["tracking_error_mm"]
    lines = [
        f"episodes {s['episodes']}, successes {s['successes']}, cycles {s['cycles']} at {s['dt_ms']} ms, {s['minutes']} min",
        f"cycle period jitter (ms): p50 {j.get('p50', float('nan')):.2f}, p99 {j.get('p99', float('nan')):.2f}, "
        f"max {j.get('max', float('nan')):.2f}; cycles skipped after an overrun: {s['skipped_cycles']}",
        f"observation-to-action latency (ms): p50 {lat['p50']:.1f}, p99 {lat['p99']:.1f}, max {lat['max']:.1f} "
        f"over {s['chunks']} chunks",
        f"late actions dropped: {s['dropped_actions']} ({s['dropped_per_minute']} per minute)",
        f"safety clips: {s['clips'] or 'none'}; largest commanded TCP speed {s['max_cmd_speed'] or 0:.3f} m/s",
        f"tracking error, measured vs commanded TCP (mm): p50 {tr['p50']:.1f}, max {tr['max']:.1f}",
    ]
    if (iv := s.get("interventions")) is not None:
        lines.append(f"interventions: {iv['total']} ({iv['per_episode']} per episode), mean length "
                     f"{iv['mean_length_s'] if iv['mean_length_s'] is not None else '-'} s, "
                     f"{100 * iv['human_fraction']:.0f}% of steps by the operator")
    lines += [f"stopped: {k}: {v}" for k, v in s["stops"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="protege-deploy report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a protege-deploy run folder (holding deploy.jsonl)")
    args = ap.parse_args(argv)
    try:
        records = read_log(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"protege-deploy report: {e}", file=sys.stderr)
        return 2
    run = Path(args.run_dir) if Path(args.run_dir).is_dir() else Path(args.run_dir).parent
    s = summarize(records)
    print(format_summary(s))
    (run / "report.json").write_text(json.dumps(s, indent=2))
    png = plot(records, run / "report.png")
    print(f"report: {run / 'report.json'}\nplots:  {png}")
    return 0
