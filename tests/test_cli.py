"""End to end: the real console scripts on real PushT episodes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protege.data.store import EpisodeWriter
from protege.policies import malloc
from protege.policies.checkpoint import read_checkpoint

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
TINY = ["policy.unet.down_dims=[32,64,128]", "policy.unet.diffusion_step_embed_dim=32", "train.batch_size=32",
        "train.log_every=10", "train.progress=false", "max_episodes=4", "train.val_every=20"]


def run(*args, check=True, cwd=None):
    p = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=ENV, timeout=600, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.mark.slow
def test_train_save_reload_evaluate(tmp_path, pusht_path):
    pytest.importorskip("gym_pusht")
    run_dir = tmp_path / "run"
    p = run("protege-train", "task=pusht_state", f"dataset={pusht_path}", f"run_dir={run_dir}", "train.steps=50",
            "train.checkpoint_every=25", *TINY)
    if malloc.available():  # train.keep_freed_memory's default, logged
        assert "memory: freed memory kept for reuse" in p.stderr + p.stdout
    ckpt = run_dir / "checkpoints/latest.pt"
    c = read_checkpoint(ckpt)
    assert c["train_state"]["step"] == 50 and c["ema_state_dict"] is not None
    assert c["config"]["task"]["name"] == "pusht_state" and c["shape_meta"]["action"]["shape"] == [2]
    assert (run_dir / "tb").is_dir() and any((run_dir / "tb").iterdir())

    out = tmp_path / "eval"
    p = run("protege-eval", f"checkpoint={ckpt}", "n_episodes=2", "n_videos=1", f"out_dir={out}", "num_inference_steps=4")
    report = json.loads((out / "eval.json").read_text())
    assert report["n_episodes"] == 2 and [e["seed"] for e in report["episodes"]] == [100000, 100001]
    for e in report["episodes"]:
        assert 0 <= e["max_coverage"] <= 1 and 1 <= e["steps"] <= 300
    assert report["mean_max_coverage"] == pytest.approx(np.mean([e["max_coverage"] for e in report["episodes"]]))
    assert report["num_inference_steps"] == 4 and report["train_step"] == 50
    video = Path(report["episodes"][0]["video"])
    assert video.exists() and video.stat().st_size > 1000 and "video" not in report["episodes"][1]
    assert "mean max reward" in p.stdout and "in the policy" in p.stdout
    assert 0 < report["inference_seconds"] < report["eval_seconds"] and report["compile_seconds"] is None


@pytest.mark.slow
def test_resume_continues_step_schedule_and_ema(tmp_path, pusht_path):
    run_dir = tmp_path / "run"
    common = ["task=pusht_state", f"dataset={pusht_path}", f"run_dir={run_dir}", "train.checkpoint_every=10", *TINY]
    run("protege-train", "train.steps=40", "train.max_minutes=0.0001", *common)  # stops early, like a killed job
    first = read_checkpoint(run_dir / "checkpoints/latest.pt")["train_state"]
    assert 1 <= first["step"] < 40
    run("protege-train", "train.steps=40", "resume=true", *common)
    s = read_checkpoint(run_dir / "checkpoints/latest.pt")["train_state"]
    assert s["step"] == 40
    assert s["lr_scheduler"]["last_epoch"] == 40 and s["ema"]["optimization_step"] == 40
    assert s["train_seconds"] > first["train_seconds"]


@pytest.mark.slow
def test_time_budget_anneals_the_lr_schedule(tmp_path, pusht_path):
    run_dir = tmp_path / "run"
    p = run("protege-train", "task=pusht_state", f"dataset={pusht_path}", f"run_dir={run_dir}", "train.steps=1000000",
            "train.warmup_steps=0", "train.max_minutes=0.1", *TINY, "train.progress=true")  # far more steps than 6 s allow
    # the progress bar counts the minutes of the budget, not the million steps
    assert "/0.1 min" in p.stderr and "100%" in p.stderr and "/1000000" not in p.stderr
    s = read_checkpoint(run_dir / "checkpoints/latest.pt")["train_state"]
    assert 1 <= s["step"] < 1000000
    lr = s["optimizer"]["param_groups"][0]["lr"]
    assert lr < 0.01 * 1e-4  # cosine at its end, not at step/steps ~ 0 (where it would still be ~1e-4)


def test_resume_without_a_run_is_a_clear_error(tmp_path, pusht_path):
    p = run("protege-train", f"dataset={pusht_path}", f"run_dir={tmp_path / 'none'}", "resume=true", *TINY, check=False)
    assert p.returncode != 0 and "does not exist" in p.stderr + p.stdout


def test_missing_dataset_is_a_clear_error(tmp_path):
    p = run("protege-train", "train.steps=1", check=False, cwd=tmp_path)  # (a failed start still makes runs/ there)
    assert p.returncode != 0 and "dataset" in p.stderr + p.stdout


def test_a_closed_pipe_ends_protege_data_quietly(pusht_path):
    # `protege-data info <store> | head -1`: the reader is gone before the tool writes
    p = subprocess.Popen([str(BIN / "protege-data"), "info", str(pusht_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_data_info_and_validate(tmp_path, pusht_path):
    p = run("protege-data", "info", str(pusht_path))
    assert "episodes 206, steps 25650" in p.stdout
    info = json.loads(run("protege-data", "info", "--json", str(pusht_path)).stdout)
    assert info["keys"]["img"]["shape"] == [96, 96, 3]
    assert "OK" in run("protege-data", "validate", str(pusht_path)).stdout

    w = EpisodeWriter(tmp_path / "bad.zarr")
    w.add_episode({"action": np.array([[0.0, 1.0], [np.nan, 2.0]], np.float32)})
    p = run("protege-data", "validate", str(tmp_path / "bad.zarr"), check=False)
    assert p.returncode == 1 and "data/action: non-finite value: NaN or inf at episode 0 step 1" in p.stdout
    p = run("protege-data", "info", str(tmp_path / "nothing"), check=False)
    assert p.returncode == 2 and "no such episode store" in p.stderr


@pytest.mark.slow
def test_act_trains_and_evaluates_with_temporal_ensembling(tmp_path, pusht_path):
    pytest.importorskip("gym_pusht")
    run_dir = tmp_path / "act"
    run("protege-train", "policy=act", "task=pusht_state", f"dataset={pusht_path}", f"run_dir={run_dir}",
        "train.steps=30", "policy.hidden_dim=64", "policy.dim_feedforward=128", "policy.enc_layers=2",
        "policy.dec_layers=2", "policy.vae_enc_layers=2", *TINY[2:])
    ckpt = run_dir / "checkpoints/latest.pt"
    assert read_checkpoint(ckpt)["policy"]["target"] == "protege.policies.act.ACTPolicy"
    out = tmp_path / "eval"
    run("protege-eval", f"checkpoint={ckpt}", "n_episodes=2", "n_videos=0", f"out_dir={out}",
        "scheduler=temporal_ensembling")
    report = json.loads((out / "eval.json").read_text())
    assert report["scheduler"] == "temporal_ensembling" and report["n_episodes"] == 2
    assert all(1 <= e["steps"] <= 300 for e in report["episodes"])


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path, pusht_path):
    """Ctrl-C during training finishes the step, saves latest.pt and exits 0 (no traceback)."""
    import signal
    import time

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "protege-train"), "task=pusht_state", f"dataset={pusht_path}", f"run_dir={run_dir}",
                             "train.steps=100000", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (run_dir / "tb").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(3.0)  # some steps
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "resume=true" in out
    step = read_checkpoint(run_dir / "checkpoints/latest.pt")["train_state"]["step"]
    assert 0 < step < 100000


def test_every_tool_reports_expected_errors_in_one_line_with_the_trace_a_flag_away(tmp_path):
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("not a checkpoint")
    cases = [
        (["protege-train", "dataset=x", "train.stepz=3"], "Key 'stepz' is not in struct"),
        (["protege-train"], "Missing mandatory value: dataset"),
        (["protege-train", f"dataset={tmp_path / 'none.zarr'}"], "no such episode store"),
        (["protege-eval", f"checkpoint={not_ckpt}"], "not a protege checkpoint"),
        (["protege-deploy", f"checkpoint={not_ckpt}"], "not a protege checkpoint"),
        (["protege-record", "task=no_such_task"], "Could not find 'task/no_such_task'"),
        (["protege-data", "info", str(not_ckpt)], "not a zarr group"),
        # numeric settings are checked before any work: named, with the allowed range, nothing written
        (["protege-train", "dataset=x", "train.steps=-5", "train.batch_size=0"],
         "train.steps=-5: must be an integer >= 1; train.batch_size=0: must be an integer >= 1"),
        (["protege-train", "dataset=x", "train.lr=0", "train.val_ratio=1.5"], "train.lr=0: must be a number > 0; train.val_ratio=1.5: must be a number >= 0 and < 1"),
        (["protege-eval", f"checkpoint={not_ckpt}", "n_episodes=0"], "n_episodes=0: must be an integer >= 1"),
        (["protege-deploy", f"checkpoint={not_ckpt}", "loop.max_frame_age_s=-1"], "loop.max_frame_age_s=-1: must be a number > 0"),
        (["protege-record", "out=x.zarr", "episodes=0"], "episodes=0: must be an integer >= 1"),
    ]
    for args, msg in cases:
        p = run(*args, check=False, cwd=tmp_path)
        err = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(err) == 1 and msg in err[0] and err[0].startswith(args[0]) and ": error: " in err[0], (args, p.stderr)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["notes.pt"]  # no run folder, no store
    p = run("protege-eval", f"checkpoint={not_ckpt}", "--traceback", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr and "CheckpointError" in p.stderr
