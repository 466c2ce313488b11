"""``protege-data view``: one episode's cameras, states and actions over time.

Three outputs, one episode each:

- the rerun viewer (``rerun-sdk``, the field's viewer; ``pip install 'protege[viewer]'``): each
  image key as ``cameras/<key>``, each low-dim dimension as ``<key>/<i>`` on the ``step`` and
  ``time`` timelines, the episode metadata as a text document. ``.rrd`` writes a recording file
  (``rerun file.rrd`` opens it), none spawns the viewer;
- ``.html``: a self-contained page (frames as JPEG data URIs, plots as PNG, a slider and a play
  button, the metadata table), for a browser anywhere, no server;
- ``.mp4``: the cameras side by side above the plots, with a cursor at the current step.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .store import EpisodeStore


class ViewerError(RuntimeError):
    """The viewer cannot run here (rerun is not installed, or an unknown output type)."""


def load_episode(store: EpisodeStore, episode: int) -> dict[str, Any]:
    """{"images": {key: (T, H, W, 3) uint8}, "series": {key: (T, D) float}, "meta": dict, "fps": float}.

    Raises:
        IndexError: no such episode.
    """
    ep = store.episode(episode)
    images, series, dims = {}, {}, {}
    for key, value in ep.items():
        spec = store.spec(key)
        if spec.is_image:
            images[key] = np.clip(np.round(value), 0, 255).astype(np.uint8) if value.dtype != np.uint8 else value
        else:
            series[key] = value.reshape(len(value), -1).astype(np.float64)
            n = series[key].shape[1]
            dims[key] = (list(spec.names) or [str(j) for j in range(n)], spec.dim_units())
    return {"images": images, "series": series, "dims": dims, "meta": store.episode_meta[episode % store.n_episodes],
            "fps": float(store.fps or 10.0), "steps": int(store.episode_lengths[episode]), "episode": episode % store.n_episodes,
            "store": str(store.path)}


# -- plots ---------------------------------------------------------------------------------------
PLOT_LEFT, PLOT_RIGHT = 0.08, 0.98  # axes' horizontal extent as a fraction of the figure: the cursor's range


def plot_panels(ep: dict[str, Any]) -> list[tuple[str, str, list[int], list[str]]]:
    """(y label, key, its dimensions drawn, their names) per panel: one per low-dim key, split by
    unit when its dimensions have several (an angle never shares a pixel axis)."""
    panels = []
    for key, v in ep["series"].items():
        names, units = ep.get("dims", {}).get(key, ([str(j) for j in range(v.shape[1])], [""] * v.shape[1]))
        groups: dict[str, list[int]] = {}
        for j in range(v.shape[1]):
            groups.setdefault(units[j] if j < len(units) else "", []).append(j)
        for unit, js in groups.items():
            panels.append((f"{key} ({unit})" if unit else key, key, js, names))
    return panels


def plot_series(ep: dict[str, Any], width_px: int = 900) -> np.ndarray:
    """One panel per low-dim key (every dimension a line) over steps; RGB uint8 image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = ep["steps"]
    panels = plot_panels(ep)
    fig, axes = plt.subplots(max(1, len(panels)), 1, figsize=(width_px / 100, 1.6 * max(1, len(panels))), dpi=100,
                             sharex=True, squeeze=False)
    for ax, (label, key, js, names) in zip(axes[:, 0], panels):
        v = ep["series"][key]
        for j in js[:16]:
            ax.plot(np.arange(T), v[:, j], lw=1, label=names[j] if j < len(names) else str(j))
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        if len(js) > 1 or (names and not names[js[0]].isdigit()):
            ax.legend(fontsize=6, ncol=min(8, len(js)), loc="upper right")
        if len(js) > 16:
            ax.text(0.01, 0.9, f"first 16 of {len(js)} dimensions", transform=ax.transAxes, fontsize=6)
    keys = panels
    axes[-1, 0].set_xlim(0, max(1, T - 1))
    axes[-1, 0].set_xlabel(f"step ({ep['fps']:g} Hz)", fontsize=8)
    fig.subplots_adjust(left=PLOT_LEFT, right=PLOT_RIGHT, top=0.97, bottom=0.12 if len(keys) < 3 else 0.06, hspace=0.15)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def _cursor_x(width: int, t: int, T: int) -> int:
    return int(round(width * (PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * t / max(1, T - 1))))


def _tile(frames: list[np.ndarray], height: int) -> np.ndarray:
    scaled = [cv2.resize(f, (max(1, round(f.shape[1] * height / f.shape[0])), height), interpolation=cv2.INTER_NEAREST if f.shape[0] < height else cv2.INTER_AREA)
              for f in frames]
    return np.concatenate(scaled, axis=1)


# -- outputs -------------------------------------------------------------------------------------
def write_mp4(ep: dict[str, Any], out: Path, height: int = 240) -> Path:
    """Cameras side by side above the plots with a cursor, at the store's fps (H.264 via PyAV)."""
    import av

    plot = plot_series(ep) if ep["series"] else None
    T = ep["steps"]
    cams = _tile([v[0] for v in ep["images"].values()], height) if ep["images"] else None
    width = max(cams.shape[1] if cams is not None else 0, plot.shape[1] if plot is not None else 0)
    width += width % 2
    def canvas_at(t: int) -> np.ndarray:
        rows = []
        if ep["images"]:
            rows.append(_tile([v[t] for v in ep["images"].values()], height))
        if plot is not None:
            p = plot.copy()
            x = _cursor_x(p.shape[1], t, T)
            p[:, max(0, x - 1) : x + 1] = (220, 30, 30)
            rows.append(p)
        h = sum(r.shape[0] for r in rows)
        canvas = np.full((h + h % 2, width, 3), 255, np.uint8)  # H.264 wants even sizes
        y = 0
        for r in rows:
            canvas[y : y + r.shape[0], : r.shape[1]] = r
            y += r.shape[0]
        text = f"episode {ep['episode']} step {t}/{T - 1}"
        for color, thick in (((255, 255, 255), 3), ((0, 0, 0), 1)):  # readable on dark and light frames
            cv2.putText(canvas, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, thick)
        return canvas

    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=round(ep["fps"]))
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20"}
        first = canvas_at(0)
        stream.width, stream.height = first.shape[1], first.shape[0]
        for t in range(T):
            frame = first if t == 0 else canvas_at(t)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def _jpeg_uri(rgb: np.ndarray, quality: int = 90) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def _png_uri(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
.cams img {{ height: {cam_height}px; image-rendering: pixelated; margin-right: 6px; }}
.plot {{ position: relative; display: inline-block; }}
.plot img {{ display: block; max-width: 100%; }}
#cursor {{ position: absolute; top: 0; bottom: 0; width: 2px; background: #d22; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
</style></head><body>
<h2>{title}</h2>
<div class="cams">{cams}</div>
<p><button id="play">play</button> <input id="slider" type="range" min="0" max="{last}" value="0" style="width: 60%">
 <span id="label"></span></p>
<div class="plot">{plot}<div id="cursor"></div></div>
<h3>values at this step</h3><table id="values"></table>
<h3>episode metadata</h3>{meta}
<script>
const frames = {frames};
const series = {series};
const T = {steps}, fps = {fps}, left = {left}, right = {right};
const slider = document.getElementById("slider"), label = document.getElementById("label");
function show(t) {{
  t = Math.max(0, Math.min(T - 1, t)); slider.value = t;
  for (const [key, list] of Object.entries(frames)) document.getElementById("cam-" + key).src = list[t];
  label.textContent = "step " + t + " / " + (T - 1) + "   t = " + (t / fps).toFixed(2) + " s";
  const c = document.getElementById("cursor");
  if (c) c.style.left = (100 * (left + (right - left) * t / Math.max(1, T - 1))) + "%";
  document.getElementById("values").innerHTML = Object.entries(series).map(
    ([k, v]) => "<tr><th>" + k + "</th><td>" + v[t].map(x => x.toPrecision(4)).join(", ") + "</td></tr>").join("");
}}
let timer = null;
document.getElementById("play").onclick = () => {{
  if (timer) {{ clearInterval(timer); timer = null; return; }}
  timer = setInterval(() => {{ const t = +slider.value + 1; if (t >= T) {{ clearInterval(timer); timer = null; }} else show(t); }}, 1000 / fps);
}};
slider.oninput = () => show(+slider.value);
document.onkeydown = (e) => {{ if (e.key === "ArrowRight") show(+slider.value + 1); if (e.key === "ArrowLeft") show(+slider.value - 1); }};
show(0);
</script></body></html>
"""


def write_html(ep: dict[str, Any], out: Path, max_width: int = 320) -> Path:
    """A self-contained page: frames (scaled to at most ``max_width`` px), plots, metadata."""
    frames = {}
    for key, v in ep["images"].items():
        scale = min(1.0, max_width / v.shape[2])
        size = (max(1, round(v.shape[2] * scale)), max(1, round(v.shape[1] * scale)))
        frames[key] = [_jpeg_uri(f if scale == 1.0 else cv2.resize(f, size, interpolation=cv2.INTER_AREA)) for f in v]
    cams = "".join(f'<figure style="display:inline-block;margin:0 8px 0 0"><img id="cam-{html.escape(k)}" alt="{html.escape(k)}">'
                   f"<figcaption>{html.escape(k)}</figcaption></figure>" for k in frames)
    plot = f'<img src="{_png_uri(plot_series(ep))}" alt="states and actions">' if ep["series"] else ""
    meta = "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                               for k, v in ep["meta"].items()) + "</table>" if ep["meta"] else "<p>none recorded</p>"
    title = f"{Path(ep['store']).name}: episode {ep['episode']} ({ep['steps']} steps at {ep['fps']:g} Hz)"
    page = _PAGE.format(title=html.escape(title), cams=cams, last=ep["steps"] - 1, plot=plot, meta=meta,
                        frames=json.dumps(frames), series=json.dumps({k: v.tolist() for k, v in ep["series"].items()}),
                        steps=ep["steps"], fps=ep["fps"], left=PLOT_LEFT, right=PLOT_RIGHT, cam_height=192)
    out.write_text(page)
    return out


def log_rerun(ep: dict[str, Any], out: Path | None = None) -> Path | None:
    """Send the episode to a spawned rerun viewer, or save it as ``out`` (.rrd).

    Raises:
        ViewerError: rerun-sdk is not installed.
    """
    try:
        import rerun as rr
    except ImportError as e:
        raise ViewerError("the rerun viewer needs rerun-sdk: pip install 'protege[viewer]' "
                          "(or write a self-contained page with --out episode.html, or a video with --out episode.mp4)") from e
    rec = rr.RecordingStream("protege-episode", recording_id=f"{Path(ep['store']).name}-episode-{ep['episode']}")
    if out is None:
        rec.spawn()
    else:
        rec.save(str(out))
    rec.log("meta", rr.TextDocument(json.dumps(ep["meta"], indent=2), media_type="text/markdown"), static=True)
    for t in range(ep["steps"]):
        rec.set_time("step", sequence=t)
        rec.set_time("time", duration=t / ep["fps"])
        for key, v in ep["images"].items():
            rec.log(f"cameras/{key}", rr.Image(v[t]))
        for key, v in ep["series"].items():
            rec.log(key, rr.Scalars(v[t]))
    rec.flush()
    return out


def view(store: EpisodeStore, episode: int = 0, out: str | Path | None = None) -> Path | None:
    """Show ``episode`` of ``store``: rerun viewer when ``out`` is None, else write ``out``
    (.rrd, .html or .mp4). Returns the file written, if any.

    Raises:
        IndexError: no such episode. ViewerError: an unknown suffix, or rerun missing.
    """
    ep = load_episode(store, episode)
    if out is None:
        return log_rerun(ep)
    out = Path(out)
    suffix = out.suffix.lower()
    writers = {".rrd": log_rerun, ".html": write_html, ".mp4": write_mp4}
    if suffix not in writers:
        raise ViewerError(f"--out {out}: use a .html, .mp4 or .rrd file")
    return writers[suffix](ep, out)
