"""protege-data stats and view on small stores and on the real PushT store."""

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from protege.data.inspect import store_stats
from protege.data.store import EpisodeStore, EpisodeWriter
from protege.data.view import load_episode, view

BIN = Path(sys.executable).parent


def _store(path):
    with EpisodeWriter(path, fps=15, key_meta={"state": {"unit": "m"}}) as w:
        for i, T in enumerate((6, 9)):
            t = np.arange(T, dtype=np.float32)
            yy, xx = np.mgrid[:24, :32]
            frames = [np.stack([xx * 4, yy * 4, xx * 0 + 20], -1) + 7 * k + 40 * i for k in range(T)]  # smooth: JPEG keeps it
            w.add_episode({"wrist_rgb": np.asarray(frames, np.uint8),
                           "state": np.stack([t, -t, t * 0 + i], 1),
                           "action": np.full((T, 2), i, np.float32)},
                          task="lift", operator=["ana", "ben"][i], success=bool(i))
    return EpisodeStore(path)


def test_stats_are_the_data_s(tmp_path):
    store = _store(tmp_path / "s.zarr")
    s = store_stats(store, progress=False)
    state = np.concatenate([store.episode(i)["state"] for i in range(2)])
    np.testing.assert_allclose(s["keys"]["state"]["min"], state.min(0))
    np.testing.assert_allclose(s["keys"]["state"]["std"], state.std(0), rtol=1e-6)
    assert sum(s["keys"]["state"]["hist"][0]["counts"]) == 15
    assert s["episode_length"]["values"] == [6, 9] and s["success"] == {"yes": 1, "no": 1, "unlabelled": 0}
    assert s["operators"] == {"ana": 1, "ben": 1} and s["tasks"] == {"lift": 2}
    img = np.concatenate([store.episode(i)["wrist_rgb"] for i in range(2)]).reshape(-1, 3)
    np.testing.assert_allclose(s["keys"]["wrist_rgb"]["mean"], img.mean(0))


def test_stats_cli_prints_and_draws_pusht(tmp_path, pusht_path):
    png = tmp_path / "h.png"
    p = subprocess.run([str(BIN / "protege-data"), "stats", str(pusht_path), "--png", str(png)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "206 episodes, 25650 steps" in p.stdout and "episode length min/mean/max 49/124.5/246" in p.stdout
    assert re.search(r"state \(5,\) float32 low_dim[^\n]*\n.*\n\s+\S+\s+13.46\s+496.1", p.stdout)
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 400 and img.shape[1] > 800


def test_view_writes_html_mp4_and_rrd_that_hold_the_episode(tmp_path):
    store = _store(tmp_path / "s.zarr")
    ep = store.episode(1)
    page = view(store, 1, tmp_path / "e.html").read_text()
    frames = json.loads(re.search(r"const frames = (\{.*?\});\n", page).group(1))["wrist_rgb"]
    assert len(frames) == 9
    jpg = np.frombuffer(base64.b64decode(frames[4].split(",", 1)[1]), np.uint8)
    got = cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(got.astype(int) - ep["wrist_rgb"][4]).mean() < 4  # this frame (JPEG), not a neighbour's
    assert np.abs(got.astype(int) - ep["wrist_rgb"][5]).mean() > 5
    series = json.loads(re.search(r"const series = (\{.*?\});\n", page).group(1))
    np.testing.assert_allclose(series["state"], ep["state"])
    assert "ben" in page and "success" in page and "const T = 9, fps = 15" in page

    av = pytest.importorskip("av")
    with av.open(str(view(store, 1, tmp_path / "e.mp4"))) as c:
        s = c.streams.video[0]
        assert sum(1 for _ in c.decode(video=0)) == 9 and s.average_rate == 15

    pytest.importorskip("rerun")
    from rerun.chunk import RrdReader

    rows: dict[str, int] = {}
    for chunk in RrdReader(view(store, 1, tmp_path / "e.rrd")).stream():
        rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
    assert rows["/cameras/wrist_rgb"] == 9 and rows["/state"] == 9 and rows["/action"] == 9 and rows["/meta"] == 1


def test_view_cli_on_pusht_and_its_errors(tmp_path, pusht_path):
    cli = [str(BIN / "protege-data"), "view", str(pusht_path)]
    p = subprocess.run(cli + ["-e", "-1", "-o", str(tmp_path / "last.html")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "episode 205" in p.stdout and (tmp_path / "last.html").stat().st_size > 10000
    for args, msg in ((["-e", "206", "-o", "x.html"], "out of range"), (["-o", str(tmp_path / "x.gif")], ".html, .mp4 or .rrd")):
        p = subprocess.run(cli + args, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr
    assert load_episode(EpisodeStore(pusht_path), 0)["images"]["img"].dtype == np.uint8  # float pixels shown as uint8


def test_plots_name_each_dimension_and_keep_units_apart(tmp_path):
    """A store that names its dimensions and gives one unit per dimension: the viewer's legends use
    the names and an angle gets its own panel; stats say which dimensions the PNG leaves out."""
    from protege.data.inspect import format_stats, plot_stats, store_stats, undrawn
    from protege.data.store import EpisodeWriter
    from protege.data.view import load_episode, plot_panels

    path = tmp_path / "named.zarr"
    meta = {"state": {"names": ["x", "y", "angle"], "unit": "px, px, rad"}}
    with EpisodeWriter(path, fps=10, key_meta=meta) as w:
        w.add_episode({"state": np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32),
                       "wide": np.zeros((6, 15), np.float32)})
    s = EpisodeStore(path)
    assert s.spec("state").names == ("x", "y", "angle") and s.spec("state").dim_units() == ["px", "px", "rad"]
    panels = {label: (dims, names) for label, _, dims, names in plot_panels(load_episode(s, 0))}
    assert panels["state (px)"] == ([0, 1], ["x", "y", "angle"]) and panels["state (rad)"][0] == [2]
    st = store_stats(s)
    assert "angle" in format_stats(st)
    import matplotlib

    matplotlib.use("Agg")
    png = plot_stats(st, tmp_path / "s.png")
    assert png.stat().st_size > 1000
    assert undrawn(st) == ["wide: the first 12 of 15 dimensions drawn (stats --json lists them all)"]
