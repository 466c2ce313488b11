"""Our training loop against LeRobot 0.4.4's, each as its CLI runs it, on the same PushT image data.

    python benchmarks/vs_lerobot_train.py [--steps 80] [--log-every 20] [--lerobot-python PATH]

``vs_lerobot.py`` times the training step alone, on random tensors. This times what a user waits
for: ``protege-train`` and ``lerobot-train`` on the PushT image task (206 episodes, one 96x96
camera), the image Diffusion Policy at the same shapes (vs_lerobot's "CPU default": U-Net
64/128/256, full-width ResNet18 with GroupNorm from scratch, 32 keypoints, crop 84x84,
n_obs_steps 2, horizon 16), batch 64, data loading included. One input differs: LeRobot's policy
conditions on the whole ``observation.state`` of the export (PushT's 5-D state: agent and block
pose; 21,504 more parameters in the FiLM layers, 0.13%), ours on the 2-D agent position as the
pusht_image task does. Each loads its own format:
ours the episode store (``$PROTEGE_PUSHT`` or the data folder), LeRobot the same episodes exported
to its v3.0 format by ``protege-data convert`` (H.264, cached in the user's cache folder), decoded
with PyAV, by its default 4 dataloader workers (and, as a second LeRobot run, in its main process:
``--lerobot-workers 4 0``). Both run with the machine's threads (OMP_NUM_THREADS).

A step's time is the median over the logging windows after the first (warm-up) one: ours from
the trainer's samples/s (tensorboard, ``train/samples_per_s``, data included), LeRobot's from its
log lines (``updt_s`` + ``data_s``, the window's averages). Ours keeps its defaults that LeRobot
lacks (EMA of the weights), which only cost us. Writes ``results/vs_lerobot_train.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import pusht_store, write_result  # benchmarks/machine.py
from vs_lerobot import lerobot_python  # benchmarks/vs_lerobot.py

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "protege" / "lerobot-pusht-v3"
BATCH = 64


def export(store: str) -> Path:
    """The store in LeRobot v3.0 format, made once per store (the cache is named by its path)."""
    dest = CACHE / hashlib.sha1(str(Path(store).resolve()).encode()).hexdigest()[:12]
    if not (dest / "meta" / "info.json").exists():
        shutil.rmtree(dest, ignore_errors=True)
        print(f"exporting {store} to LeRobot v3.0 at {dest} ...", flush=True)
        subprocess.run([str(BIN / "protege-data"), "convert", "--to", "lerobot", "--fps", "10", store, str(dest)], check=True)
    return dest


def ours(store: str, steps: int, log_every: int, work: Path) -> tuple[list[float], int]:
    """Seconds per step of protege-train (data included), one per logging window, and its parameters."""
    run_dir = work / "ours"
    subprocess.run([str(BIN / "protege-train"), "task=pusht_image", "policy=diffusion", f"dataset={store}",
                    f"run_dir={run_dir}", f"train.steps={steps}", f"train.log_every={log_every}",
                    f"train.batch_size={BATCH}", "train.progress=false", "train.val_every=0", "train.checkpoint_every=0",
                    "policy.image_encoder.width=64", "policy.image_encoder.crop_shape=[84,84]"], check=True)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from protege.policies.checkpoint import load_policy

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    params = sum(p.numel() for p in load_policy(run_dir / "checkpoints" / "latest.pt")[0].parameters())
    return [BATCH / e.value for e in acc.Scalars("train/samples_per_s")], params


def theirs(python: str, dataset: Path, steps: int, log_every: int, work: Path,
           workers: int) -> tuple[list[float], list[float], int]:
    """lerobot-train's seconds per step spent in the update (updt_s) and waiting for data (data_s),
    one per logging window, and its learnable parameters."""
    cmd = [python, "-m", "lerobot.scripts.lerobot_train", "--dataset.repo_id=local/pusht", f"--dataset.root={dataset}",
           "--dataset.video_backend=pyav", "--policy.type=diffusion", "--policy.device=cpu", "--policy.push_to_hub=false",
           "--policy.down_dims=[64,128,256]", "--policy.crop_shape=[84,84]", "--policy.pretrained_backbone_weights=null",
           "--policy.use_group_norm=true", "--policy.spatial_softmax_num_keypoints=32", "--policy.n_obs_steps=2",
           "--policy.horizon=16", "--policy.n_action_steps=8", f"--batch_size={BATCH}", f"--steps={steps}",
           f"--log_freq={log_every}", f"--num_workers={workers}", "--save_checkpoint=false", "--eval_freq=0", "--wandb.enable=false",
           f"--output_dir={work / f'lerobot-{workers}'}"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"lerobot-train failed:\n{p.stderr[-3000:]}")
    logs = p.stdout + p.stderr
    windows = re.findall(r"updt_s:([0-9.]+).*?data_s:([0-9.]+)", logs)
    params = re.search(r"num_learnable_params=(\d+)", logs)
    if not windows or not params:
        raise SystemExit(f"no updt_s/data_s or num_learnable_params in lerobot-train's log:\n{logs[-3000:]}")
    return [float(u) for u, _ in windows], [float(d) for _, d in windows], int(params.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--dataset", default=pusht_store(), help="the PushT episode store")
    ap.add_argument("--lerobot-workers", type=int, nargs="+", default=[4, 0],
                    help="LeRobot dataloader workers, one LeRobot run each (4: its default)")
    ap.add_argument("--lerobot-python", default=None, help="LeRobot's venv python (default: as vs_lerobot.py finds it)")
    ap.add_argument("--out", default=str(HERE / "results" / "vs_lerobot_train.json"))
    args = ap.parse_args()
    python = lerobot_python(args.lerobot_python)
    dataset = export(args.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        a, pa = ours(args.dataset, args.steps, args.log_every, Path(tmp))
        runs = []
        for w in args.lerobot_workers:
            upd, data, pb = theirs(python, dataset, args.steps, args.log_every, Path(tmp), w)
            step = statistics.median([u + d for u, d in zip(upd, data)][1:])
            runs.append({"num_workers": w, "params": pb, "update_s": upd, "data_s": data, "median_s": step,
                         "median_update_s": statistics.median(upd[1:]), "median_data_s": statistics.median(data[1:]),
                         "ratio": statistics.median(a[1:]) / step})
    ma = statistics.median(a[1:])
    print("\n| loop | parameters | step with data, s (median of the windows after the first) | ours / it |")
    print("|---|---|---|---|")
    print(f"| protege-train | {pa / 1e6:.2f} M | {ma:.2f} (windows {', '.join(f'{x:.2f}' for x in a)}) | - |")
    for r in runs:
        print(f"| lerobot-train 0.4.4, {r['num_workers']} dataloader workers | {r['params'] / 1e6:.2f} M | {r['median_s']:.2f} "
              f"(update {r['median_update_s']:.2f} + waiting for data {r['median_data_s']:.2f}) | {r['ratio']:.2f} |")
    write_result(args.out, "vs_lerobot_train", steps=args.steps, log_every=args.log_every, batch_size=BATCH,
                 dataset=args.dataset, lerobot_dataset=str(dataset), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                 ours_params=pa, ours_step_s=a, ours_median_s=ma, lerobot=runs)


if __name__ == "__main__":
    main()
