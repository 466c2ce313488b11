"""End to end in simulation: protege-record (scripted expert) -> protege-train -> protege-eval."""

import json

import numpy as np
import pytest

pytest.importorskip("mujoco")

from protege.data.store import EpisodeStore  # noqa: E402
from test_cli import TINY, run  # noqa: E402


@pytest.mark.slow
def test_record_train_evaluate_lift(tmp_path):
    store = tmp_path / "demos.zarr"
    # The command line: task=lift is an alias of task=sim_lift.
    p = run("protege-record", "robot=sim", "task=lift", "teleop=scripted", "episodes=2", f"out={store}", "seed=5")
    assert "kept 2 of 2" in p.stdout
    s = EpisodeStore(store)
    assert s.n_episodes == 2 and s.zarr_format == 3 and s.fps == 10
    assert s.spec("scene_rgb").shape == (96, 96, 3) and s.spec("action").shape == (10,)
    assert s.spec("tcp_pose").frame == "robot base"
    meta = s.attrs["episodes"]
    assert [m["seed"] for m in meta] == [5, 6] and all(m["success"] and m["task"] == "sim_lift" for m in meta)
    ts = s.episode(0)["timestamp"]
    np.testing.assert_allclose(np.diff(ts.ravel()), 0.1, atol=1e-6)  # the robot clock at 10 Hz

    run_dir = tmp_path / "run"
    run("protege-train", "task=sim_lift", f"dataset={store}", f"run_dir={run_dir}", "train.steps=4",
        "train.batch_size=4", "policy.image_encoder.width=8", "train.val_ratio=0", *TINY[:2], "train.progress=false")
    out = tmp_path / "eval"
    run("protege-eval", f"checkpoint={run_dir}/checkpoints/latest.pt", "n_episodes=2", "n_videos=1",
        f"out_dir={out}", "num_inference_steps=2")
    report = json.loads((out / "eval.json").read_text())
    assert report["task"] == "sim_lift" and report["n_episodes"] == 2
    assert report["mean_max_coverage"] is None and 0 <= report["success_rate"] <= 1
    assert len(report["success_rate_ci95"]) == 2
    assert (out / "videos").is_dir() and any((out / "videos").iterdir())
