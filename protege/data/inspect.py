"""``protege-data stats``: what a store holds, in numbers and histograms.

Per key: per-dimension min, max, mean and std of low-dim arrays (trailing axes flattened), and
per-channel statistics of images (over a sample of at most ``max_frames`` frames). Per store:
episode lengths, success labels, operators, tasks and sources from the episode metadata.
:func:`plot_stats` draws the histograms into one PNG.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .store import EpisodeStore

MAX_DIMS = 12  # dimensions per key drawn in the PNG


def _blocks(store: EpisodeStore, key: str, block_bytes: int = 64 << 20):
    """(first row, rows) of ``data/<key>`` in chunk-aligned blocks of about ``block_bytes``."""
    arr = store._array(key)
    row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    block = max(arr.chunks[0], (block_bytes // row) // arr.chunks[0] * arr.chunks[0])
    for i in range(0, store.n_steps, block):
        yield i, np.asarray(arr[i : min(i + block, store.n_steps)])


def store_stats(store: EpisodeStore, max_frames: int = 2000, progress: bool = True) -> dict[str, Any]:
    """A JSON-able summary of a store.

    Returns:
        {"path", "episodes", "steps", "fps", "episode_length": {min, mean, max, values},
         "success": {"yes", "no", "unlabelled"}, "operators": {name: n}, "tasks": {...},
         "sources": {...}, "keys": {key: {"shape", "dtype", "kind", "min", "max", "mean", "std",
         "hist": {"edges", "counts"} per dimension (low-dim) or per channel (images)}}}
    """
    meta = store.episode_meta
    lengths = store.episode_lengths
    success = Counter("yes" if m.get("success") is True else "no" if m.get("success") is False else "unlabelled" for m in meta)
    out: dict[str, Any] = {
        "path": str(store.path), "episodes": store.n_episodes, "steps": store.n_steps, "fps": store.fps,
        "episode_length": {"min": int(lengths.min()) if len(lengths) else 0, "mean": float(lengths.mean()) if len(lengths) else 0.0,
                           "max": int(lengths.max()) if len(lengths) else 0, "values": lengths.tolist()},
        "success": {k: success.get(k, 0) for k in ("yes", "no", "unlabelled")},
        "operators": dict(Counter(str(m["operator"]) for m in meta if "operator" in m)),
        "tasks": dict(Counter(str(m["task"]) for m in meta if "task" in m)),
        "sources": dict(Counter(str(m["source"]) for m in meta if "source" in m)),
        "keys": {},
    }
    for key in tqdm(store.keys, desc="stats", disable=not progress, leave=False):
        spec = store.spec(key)
        if spec.is_image:
            step = max(1, -(-store.n_steps // max_frames))  # every step-th frame, read block by block
            parts = [b[(-i) % step :: step].reshape(-1, 3) for i, b in _blocks(store, key)]
            x = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, 3))
            kind, values = "image", x
            edges = np.linspace(0, 255 if x.max(initial=0) > 1 else 1, 33)  # uint8 or float 0..255; float 0..1
        else:
            kind = "low_dim"
            values = np.concatenate([b.reshape(len(b), -1).astype(np.float64) for _, b in _blocks(store, key)]) if store.n_steps else np.zeros((0, 1))
            edges = None
        finite = np.where(np.isfinite(values), values, np.nan)
        with np.errstate(all="ignore"):
            d = {"shape": list(spec.shape), "dtype": spec.dtype, "kind": kind, "unit": spec.unit, "names": list(spec.names),
                 "min": np.nanmin(finite, axis=0).tolist() if len(values) else [],
                 "max": np.nanmax(finite, axis=0).tolist() if len(values) else [],
                 "mean": np.nanmean(finite, axis=0).tolist() if len(values) else [],
                 "std": np.nanstd(finite, axis=0).tolist() if len(values) else [],
                 "non_finite": int((~np.isfinite(values)).sum())}
        hist = []
        for j in range(min(values.shape[1], MAX_DIMS)):
            col = values[:, j][np.isfinite(values[:, j])]
            counts, e = np.histogram(col, bins=edges if edges is not None else 32)
            hist.append({"edges": e.tolist(), "counts": counts.tolist()})
        d["hist"] = hist
        out["keys"][key] = d
    return out


def format_stats(s: dict[str, Any]) -> str:
    """The summary as text, a line per dimension."""
    el = s["episode_length"]
    lines = [f"{s['path']}: {s['episodes']} episodes, {s['steps']} steps, fps {s['fps']}",
             f"episode length min/mean/max {el['min']}/{el['mean']:.1f}/{el['max']}",
             f"success: {s['success']['yes']} yes, {s['success']['no']} no, {s['success']['unlabelled']} unlabelled"]
    for field in ("operators", "tasks", "sources"):
        if s[field]:
            lines.append(f"{field}: " + ", ".join(f"{k} ({n})" for k, n in sorted(s[field].items())))
    for key, d in s["keys"].items():
        unit = f" [{d['unit']}]" if d.get("unit") else ""
        lines.append(f"{key} {tuple(d['shape'])} {d['dtype']} {d['kind']}{unit}" +
                     (f"  NON-FINITE: {d['non_finite']}" if d["non_finite"] else ""))
        names = ["R", "G", "B"] if d["kind"] == "image" else (d.get("names") or [str(i) for i in range(len(d["min"]))])
        w = max([4, *map(len, names[:MAX_DIMS])])
        lines.append(f"  {'dim':>{w}} {'min':>11} {'max':>11} {'mean':>11} {'std':>11}")
        for j, name in enumerate(names[:MAX_DIMS]):
            lines.append(f"  {name:>{w}} {d['min'][j]:11.4g} {d['max'][j]:11.4g} {d['mean'][j]:11.4g} {d['std'][j]:11.4g}")
        if len(names) > MAX_DIMS:
            lines.append(f"  ... {len(names) - MAX_DIMS} more dimensions (--json lists them all)")
    return "\n".join(lines)


def undrawn(s: dict[str, Any]) -> list[str]:
    """A line per key whose dimensions the PNG does not all draw (it draws at most MAX_DIMS)."""
    return [f"{key}: the first {len(d['hist'])} of {len(d['min'])} dimensions drawn (stats --json lists them all)"
            for key, d in s["keys"].items() if d["kind"] != "image" and len(d["min"]) > len(d["hist"])]


def plot_stats(s: dict[str, Any], out: str | Path) -> Path:
    """Histograms of every key's dimensions (at most 12 each, the title says which keys have more)
    and of the episode lengths, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("episode length (steps)", np.histogram(s["episode_length"]["values"], bins=min(30, max(1, s["episodes"]))))]
    notes = undrawn(s)
    for key, d in s["keys"].items():
        names = ["R", "G", "B"] if d["kind"] == "image" else (d.get("names") or [str(i) for i in range(len(d["min"]))])
        for name, h in zip(names, d["hist"]):
            panels.append((f"{key}[{name}]" + (" (log)" if d["kind"] == "image" else ""), (np.asarray(h["counts"]), np.asarray(h["edges"]))))
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), squeeze=False)
    for ax, (title, (counts, edges)) in zip(axes.flat, panels):
        ax.stairs(counts, edges, fill=True)
        if title.endswith("(log)"):  # pixel values pile up at the background's
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{Path(s['path']).name}: {s['episodes']} episodes, {s['steps']} steps"
                 + ("".join(f"\n{n}" for n in notes)), fontsize=11)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
