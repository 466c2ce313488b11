"""Data-parallel training under torchrun (gloo, on this CPU): two processes train as one process
with the same global batch does; a killed rank stops the run and resume continues."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protege.policies.checkpoint import read_checkpoint

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["task=pusht_state", "max_episodes=6", "train.batch_size=8", "train.val_ratio=0", "train.progress=false",
        "train.log_every=1", "policy.unet.down_dims=[16,32,64]", "policy.unet.diffusion_step_embed_dim=16",
        "train.warmup_steps=0", "train.lr=1e-3"]


def train(pusht_path, run_dir, *extra, check=True, timeout=600):
    p = subprocess.run([str(BIN / "protege-train"), f"dataset={pusht_path}", f"run_dir={run_dir}", *TINY, *extra],
                       capture_output=True, text=True, env=ENV, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def weights(run_dir):
    return read_checkpoint(Path(run_dir) / "checkpoints" / "latest.pt")["state_dict"]


def max_diff(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path, pusht_path):
    train(pusht_path, tmp_path / "one", "train.steps=4")
    two = train(pusht_path, tmp_path / "two", "train.steps=4", "train.nproc=2")
    assert "data parallel: 2 processes (gloo), global batch 8 (4 per process)" in two.stdout + two.stderr
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max_diff(w1, w2) < 1e-4  # float tolerance: gloo sums the gradients in another order
    train(pusht_path, tmp_path / "seed", "train.steps=4", "seed=7")
    assert max_diff(w1, weights(tmp_path / "seed")) > 1e-3  # the comparison can tell runs apart
    # gradient accumulation: the batch in micro-batches (one process; two processes, gradients synced
    # at the last micro-batch only) draws and learns as one pass over it
    acc = train(pusht_path, tmp_path / "acc", "train.steps=4", "train.grad_accum_steps=3")
    assert "gradient accumulation: 3 micro-batches" in acc.stdout + acc.stderr
    train(pusht_path, tmp_path / "acc2", "train.steps=4", "train.grad_accum_steps=2", "train.nproc=2")
    # (sums in another order: most weights agree to ~1e-8, Adam's steps on near-zero gradients a little less)
    assert max_diff(w1, weights(tmp_path / "acc")) < 1e-3 and max_diff(w1, weights(tmp_path / "acc2")) < 1e-3


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_and_resume_continues(tmp_path, pusht_path):
    run_dir = tmp_path / "run"
    p = subprocess.Popen([str(BIN / "protege-train"), f"dataset={pusht_path}", f"run_dir={run_dir}", *TINY,
                          "train.steps=100000", "train.checkpoint_every=5", "train.nproc=2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    ckpt = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-f", "-P", str(p.pid), "protege.policies.train"], capture_output=True, text=True)
    pids = [int(x) for x in workers.stdout.split()]
    assert len(pids) == 2, workers.stdout
    os.kill(pids[1], signal.SIGKILL)  # one rank dies
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "failed" in (out + err).lower()  # torchrun stops the other and says which failed
    step = read_checkpoint(ckpt)["train_state"]["step"]
    assert step >= 5
    train(pusht_path, run_dir, f"train.steps={step + 3}", "train.checkpoint_every=5", "train.nproc=2", "resume=true")
    assert read_checkpoint(ckpt)["train_state"]["step"] == step + 3


@pytest.mark.slow
def test_a_sweep_runs_each_combination_in_its_folder_and_tabulates_them(tmp_path, pusht_path):
    import json

    p = subprocess.run([str(BIN / "protege-train"), "--multirun", f"dataset={pusht_path}", f"run_dir={tmp_path / 'sweep'}",
                        *TINY, "train.steps=2", "train.lr=1e-3,1e-2"], capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["job"] for r in rows] == [0, 1] and all(r["step"] == 2 for r in rows)
    assert {o for r in rows for o in r["overrides"] if o.startswith("train.lr=")} == {"train.lr=0.001", "train.lr=0.01"}
    assert max_diff(weights(tmp_path / "sweep" / "0"), weights(tmp_path / "sweep" / "1")) > 1e-4  # two different runs
    assert "sweep: 2 runs" in p.stdout and "train.lr=0.01" in p.stdout


def test_a_shards_random_draws_are_its_rows_of_the_whole_batchs():
    """Under batch_shard a rank's draws are its rows of the global batch's, also for a leading
    dimension of batch x observation steps (an image encoder's random crop)."""
    import torch

    from protege.policies.distributed import batch_randint, batch_randn_like, batch_shard

    x_full = torch.zeros(8 * 2, 3)  # 8 samples x 2 observation steps
    torch.manual_seed(0)
    full_n, full_i = torch.randn_like(x_full), torch.randint(0, 50, (16,))
    for rank in (0, 1):
        torch.manual_seed(0)
        with batch_shard(slice(4 * rank, 4 * rank + 4), 8):
            n, i = batch_randn_like(torch.zeros(8, 3)), batch_randint(0, 50, 8, "cpu")
        torch.testing.assert_close(n, full_n[8 * rank: 8 * rank + 8])
        torch.testing.assert_close(i, full_i[8 * rank: 8 * rank + 8])
    with batch_shard(slice(0, 4), 8), pytest.raises(ValueError):
        batch_randint(0, 5, 6, "cpu")


@pytest.mark.slow
def test_a_store_smaller_than_one_batch_trains(tmp_path, pusht_path):
    """Fewer windows than train.batch_size: one short batch an epoch (the batch shard of the loss's
    random draws once refused it)."""
    p = train(pusht_path, tmp_path / "small", "train.steps=2", "max_episodes=1", "train.batch_size=512", check=False)
    assert p.returncode == 0, p.stderr[-2000:]
