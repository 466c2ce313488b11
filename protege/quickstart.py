"""``protege-quickstart``: the whole loop in simulation at small scale, no hardware, no downloads.

Records 100 scripted demonstrations of a simulated task (about 3 minutes), trains ACT on them for
7 minutes, evaluates the checkpoint on 10 new seeds, deploys it for 3 episodes through the
real-time control loop (simulated arm on the wall clock, safety filter and watchdogs on) and prints
the success of both and where the reports and videos are: about 12 minutes on a 2-core CPU. Each
stage is the real CLI (protege-record, protege-train, protege-eval, protege-deploy), printed before
it runs, so the output doubles as a recipe for a full-scale run.

The learning rate is held constant after a short warm-up (``train.lr_schedule=constant_with_warmup``,
as the ACT paper trains): the default cosine decay, run over a budget of a few minutes, decays
before ACT has learned to reach the cube (0/30 validation seeds after 6 minutes, against 30/30 with
a constant rate after 500 steps; benchmarks/README.md, "The quickstart").
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="protege-quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sim_lift", help="a simulated task config (sim_lift, sim_pick_place, sim_stack)")
    ap.add_argument("--policy", default="act", help="policy config (act, diffusion: it needs about an hour here)")
    ap.add_argument("--episodes", type=int, default=100, help="scripted demonstrations to record")
    ap.add_argument("--minutes", type=float, default=7.0,
                    help="training time budget (the progress bar counts it); training stops at --steps if sooner")
    ap.add_argument("--steps", type=int, default=None,
                    help="most training steps (default: 800 for ACT, which a fast machine reaches first; else 100000)")
    ap.add_argument("--eval-episodes", type=int, default=10, help="lockstep evaluation episodes, seeds 100000, ...")
    ap.add_argument("--deploy-episodes", type=int, default=3, help="real-time episodes (0: skip)")
    ap.add_argument("--out", default="runs/quickstart", help="folder for the demos, the run and the evaluation")
    ap.add_argument("overrides", nargs="*", help="extra hydra overrides for protege-train (e.g. train.batch_size=16)")
    args = ap.parse_args(argv)

    steps = args.steps or (800 if args.policy.startswith("act") else 100_000)
    out = Path(args.out)
    demos, run_dir = out / "demos.zarr", out / "run"
    bin_dir = Path(sys.executable).parent
    stages = [
        ("record", ["protege-record", f"task={args.task}", "teleop=scripted", f"episodes={args.episodes}", f"out={demos}"]),
        ("train", ["protege-train", f"task={args.task}", f"policy={args.policy}", f"dataset={demos}", f"run_dir={run_dir}",
                   f"train.max_minutes={args.minutes}", f"train.steps={steps}", "train.batch_size=32",
                   "train.checkpoint_every=500", "train.val_every=500", "train.warmup_steps=50",
                   "train.lr_schedule=constant_with_warmup", *args.overrides]),
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
    evaluation = json.loads((out / "eval/eval.json").read_text())
    n_ok = sum(e["success"] for e in evaluation["episodes"])
    print(f"  success:        {n_ok}/{evaluation['n_episodes']} evaluation episodes (lockstep)", end="")
    if args.deploy_episodes and (out / "deploy/summary.json").exists():
        deployed = json.loads((out / "deploy/summary.json").read_text())
        print(f", {deployed['successes']}/{deployed['episodes']} in real time", end="")
    print()
    print(f"  demonstrations: {demos}\n  checkpoint:     {run_dir / 'checkpoints/latest.pt'}")
    print(f"  report:         {out / 'eval/eval.json'}\n  videos:         {out / 'eval/videos'}")
    if args.deploy_episodes:
        print(f"  real time:      {out / 'deploy/summary.json'} (plots: protege-deploy report {out / 'deploy'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
