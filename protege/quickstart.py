"""``protege-quickstart``: the whole loop in simulation at small scale, no hardware, no downloads.

Records scripted demonstrations of a simulated task, trains Diffusion Policy on them for a few
minutes, evaluates the checkpoint on new seeds, deploys it for a few episodes through the real-time
control loop (simulated arm on the wall clock) and prints where the reports and videos are. Each
stage is the real CLI (protege-record, protege-train, protege-eval, protege-deploy), printed before
it runs, so the output doubles as a recipe for a full-scale run.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="protege-quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sim_lift", help="a simulated task config (sim_lift, sim_pick_place, sim_stack)")
    ap.add_argument("--policy", default="diffusion", help="policy config (diffusion, act)")
    ap.add_argument("--episodes", type=int, default=30, help="scripted demonstrations to record")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--deploy-episodes", type=int, default=3, help="real-time episodes (0: skip)")
    ap.add_argument("--out", default="runs/quickstart", help="folder for the demos, the run and the evaluation")
    ap.add_argument("overrides", nargs="*", help="extra hydra overrides for protege-train (e.g. train.batch_size=16)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    demos, run_dir = out / "demos.zarr", out / "run"
    bin_dir = Path(sys.executable).parent
    stages = [
        ("record", ["protege-record", f"task={args.task}", "teleop=scripted", f"episodes={args.episodes}", f"out={demos}"]),
        ("train", ["protege-train", f"task={args.task}", f"policy={args.policy}", f"dataset={demos}", f"run_dir={run_dir}",
                   f"train.max_minutes={args.minutes}", "train.steps=100000", "train.batch_size=32",
                   "train.checkpoint_every=500", "train.val_every=500", "train.warmup_steps=100", *args.overrides]),
        ("evaluate", ["protege-eval", f"checkpoint={run_dir / 'checkpoints/latest.pt'}", f"n_episodes={args.eval_episodes}",
                      "n_videos=3", f"out_dir={out / 'eval'}"]),
    ]
    if args.deploy_episodes:
        stages.append(("deploy (real time)", ["protege-deploy", f"checkpoint={run_dir / 'checkpoints/latest.pt'}",
                                              "robot=sim", f"episodes={args.deploy_episodes}", f"run_dir={out / 'deploy'}",
                                              "loop.start_ramp=true"]))
    if demos.exists():
        print(f"{demos} exists: reusing its demonstrations (delete it to record afresh)")
        stages = stages[1:]
    t0 = time.monotonic()
    for name, cmd in stages:
        print(f"\n== {name}: {shlex.join(cmd)}", flush=True)
        rc = subprocess.call([str(bin_dir / cmd[0]), *cmd[1:]])
        if rc != 0 and cmd[0] == "protege-deploy" and rc > 2:
            # a watchdog or the start gate stopped the arm (a briefly trained policy may trip one): said above
            print(f"quickstart: the real-time run stopped early (exit {rc}, see protege-deploy --help)")
        elif rc != 0:
            print(f"quickstart: {name} failed (exit {rc})", file=sys.stderr)
            return rc
    print(f"\nquickstart done in {(time.monotonic() - t0) / 60:.1f} min")
    print(f"  demonstrations: {demos}\n  checkpoint:     {run_dir / 'checkpoints/latest.pt'}")
    print(f"  report:         {out / 'eval/eval.json'}\n  videos:         {out / 'eval/videos'}")
    if args.deploy_episodes:
        print(f"  real time:      {out / 'deploy/summary.json'} (plots: protege-deploy report {out / 'deploy'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
