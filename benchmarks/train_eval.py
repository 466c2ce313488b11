"""Train a policy within a wall-clock budget, then evaluate every kept checkpoint in simulation;
writes the learning curve as JSON and PNG (benchmarks/results/<task>-<policy>.json).

    python benchmarks/train_eval.py --task pusht_state --policy diffusion --minutes 60 --steps 26000
    python benchmarks/train_eval.py --task pusht_state --policy act --scheduler temporal_ensembling
    python benchmarks/train_eval.py --task pusht_state --protocol paper --minutes 60 --steps 100000

--protocol paper follows the Diffusion Policy paper's PushT evaluation as far as the model
size allows on a CPU: training on 90 of the episodes (their max_train_episodes), DDPM with 100
steps at inference, and a checkpoint chosen by its score ("best" in the JSON), here on the
validation seeds, not on the reported ones as the paper did. Our protocol reports the last
checkpoint, DDIM 10.

Seeds: the learning curve and every choice use the validation seeds (from ``--val-seed``, 110000);
the reported figures (the last checkpoint, and the chosen one) are evaluated once on the test seeds
(from ``--test-seed``, 100000). The JSON names the range of every figure.

Runs the real CLIs (protege-train, protege-eval). The curve is mean max reward (the paper's PushT
score), mean max coverage and success rate against training wall-clock minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from protege.policies.checkpoint import load_policy, read_checkpoint

from machine import pusht_store, write_result  # benchmarks/machine.py

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def chunk_latency(checkpoint: Path, reps: int = 20) -> dict:
    """Parameters (millions) and median latency (ms) of one action chunk at batch 1 on this machine,
    for the checkpoint as evaluated (EMA weights, its own DDIM step count)."""
    policy, _ = load_policy(checkpoint)
    policy.eval()
    obs = {}
    for k, m in policy.shape_meta["obs"].items():
        shape = m["shape"]
        obs[k] = (torch.rand(1, policy.n_obs_steps, shape[2], shape[0], shape[1]) if m["type"] == "rgb"
                  else torch.zeros(1, policy.n_obs_steps, *shape))
    times = []
    with torch.no_grad():
        for i in range(reps + 2):
            t = time.perf_counter()
            policy.predict_action(obs)
            if i >= 2:  # warm-up
                times.append(time.perf_counter() - t)
    return {"params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
            "latency_ms": 1000 * statistics.median(times), "latency_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pusht_state")
    ap.add_argument("--policy", default="diffusion")
    ap.add_argument("--dataset", default=pusht_store())
    ap.add_argument("--minutes", type=float, default=60.0, help="training wall-clock budget")
    ap.add_argument("--steps", type=int, default=24000,
                    help="at most this many optimizer steps; the lr schedule ends at the budget or the steps, whichever first")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--checkpoint-every", type=int, default=3000)
    ap.add_argument("--eval-episodes", type=int, default=50, help="episodes for the final checkpoint")
    ap.add_argument("--curve-episodes", type=int, default=None, help="episodes per earlier checkpoint (default: --eval-episodes)")
    ap.add_argument("--scheduler", default="receding_horizon",
                    choices=["receding_horizon", "receding_horizon_blend", "temporal_ensembling"])
    ap.add_argument("--val-seed", type=int, default=110000, help="first validation seed: the curve and the choices")
    ap.add_argument("--test-seed", type=int, default=100000, help="first test seed: the reported figures, run once")
    ap.add_argument("--protocol", default="ours", choices=["ours", "paper"],
                    help="paper: 90 training episodes, DDPM-100 inference, best checkpoint by test score (see above)")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--skip-train", action="store_true", help="only evaluate the checkpoints of --run-dir")
    ap.add_argument("--extra", nargs="*", default=[], help="more hydra overrides for protege-train")
    ap.add_argument("--resume-from", default=None, metavar="RUN_DIR",
                    help="continue that run in --run-dir (its latest.pt, resume=true); --steps and --minutes count "
                         "from its start, so raise them past what it did")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<task>-<policy>.json)")
    ap.add_argument("--measure-only", action="store_true",
                    help="only (re)measure parameters and chunk latency of --run-dir's latest checkpoint into --out")
    args = ap.parse_args()

    suffix = "" if args.protocol == "ours" else f"-{args.protocol}"
    run_dir = Path(args.run_dir or f"runs/bench-{args.task}-{args.policy}{suffix}")
    out = Path(args.out or HERE / "results" / f"{args.task}-{args.policy}{suffix}.json")
    protocol_overrides = {"ours": [], "paper": ["max_episodes=90", "policy.inference_scheduler=ddpm",
                                                "policy.num_inference_steps=100"]}[args.protocol]
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.measure_only:
        result = json.loads(out.read_text())
        result.update(chunk_latency(run_dir / "checkpoints/latest.pt"))
        out.write_text(json.dumps(result, indent=2))
        print(f"{out}: {result['params_M']:.1f} M params, {result['latency_ms']:.1f} ms per chunk")
        return
    t0 = time.time()
    if not args.skip_train:
        if args.resume_from:
            ckpt = run_dir / "checkpoints/latest.pt"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(args.resume_from) / "checkpoints/latest.pt", ckpt)
        subprocess.run([
            str(BIN / "protege-train"), f"task={args.task}", f"policy={args.policy}", f"dataset={args.dataset}",
            f"run_dir={run_dir}", f"train.steps={args.steps}", f"train.max_minutes={args.minutes}",
            f"train.batch_size={args.batch_size}", f"train.checkpoint_every={args.checkpoint_every}",
            "train.keep_checkpoints=true", "train.progress=false", *(["resume=true"] if args.resume_from else []),
            *protocol_overrides, *args.extra,
        ], check=True)
    train_wall = time.time() - t0
    if args.skip_train and out.exists():  # re-evaluation: keep the training run's own record
        train_wall = 60 * json.loads(out.read_text())["train_wall_minutes"]

    latest = run_dir / "checkpoints/latest.pt"
    final_step = read_checkpoint(latest)["train_state"]["step"]
    ckpts = [p for p in sorted((run_dir / "checkpoints").glob("step_*.pt")) if int(p.stem[5:]) != final_step] + [latest]
    val_n = args.curve_episodes or args.eval_episodes
    if max(args.val_seed, args.test_seed) <= min(args.val_seed + val_n, args.test_seed + args.eval_episodes) - 1:
        ap.error("validation and test seeds overlap: choose --val-seed and --test-seed apart")

    def evaluate(ckpt: Path, seeds: str, n: int, videos: int) -> dict:
        first = args.val_seed if seeds == "validation" else args.test_seed
        eval_dir = run_dir / "eval" / f"{ckpt.stem}-{seeds}"
        subprocess.run([
            str(BIN / "protege-eval"), f"checkpoint={ckpt}", f"n_episodes={n}", f"seed={first}",
            f"n_videos={videos}", f"out_dir={eval_dir}", f"scheduler={args.scheduler}",
        ], check=True)
        r = json.loads((eval_dir / "eval.json").read_text())
        row = {k: r.get(k) for k in ("checkpoint", "n_episodes", "train_step", "train_minutes", "mean_max_reward",
                                      "mean_max_coverage", "success_rate", "success_rate_ci95", "eval_seconds", "inference_seconds",
                                      "final_stages")}
        row.update(seeds=seeds, seed_range=[first, first + n - 1])
        cov = f"coverage {r['mean_max_coverage']:.3f}  " if r["mean_max_coverage"] is not None else ""
        print(f"{ckpt.name:>20}  {seeds:>10}  step {r['train_step']:>6}  {r['train_minutes']:6.1f} min  "
              f"score {r['mean_max_reward']:.3f}  {cov}success {r['success_rate']:.2f}  ({r['n_episodes']} episodes)"
              + (f"  final stages {r['final_stages']}" if r.get("final_stages") else ""))
        return row

    curve = [evaluate(ckpt, "validation", val_n, 0) for ckpt in ckpts]  # the curve, and any choice, on validation seeds
    final = evaluate(latest, "test", args.eval_episodes, 4)  # reported: run once, the choices fixed before
    chosen = max(zip(ckpts, curve), key=lambda pc: pc[1]["mean_max_reward"])
    best = {"validation": chosen[1], "test": final if chosen[0] == latest else evaluate(chosen[0], "test", args.eval_episodes, 0)}
    result = dict(
        date=time.strftime("%Y-%m-%d %H:%M", time.localtime(t0)), protocol=args.protocol,  # date: the start
        protocol_overrides=protocol_overrides, extra_overrides=args.extra,
        task=args.task, policy=args.policy, scheduler=args.scheduler,
        dataset=args.dataset, resumed_from=args.resume_from, budget_minutes=args.minutes, steps=args.steps, batch_size=args.batch_size,
        eval_episodes=args.eval_episodes, train_wall_minutes=train_wall / 60, run_dir=str(run_dir),
        seeds={"validation": [args.val_seed, args.val_seed + val_n - 1],
               "test": [args.test_seed, args.test_seed + args.eval_episodes - 1]},
        final=final, best=best, curve=curve, **chunk_latency(run_dir / "checkpoints/latest.pt"),
    )
    write_result(out, "train_eval", **result)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [c["train_minutes"] for c in curve]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [c["mean_max_reward"] for c in curve], "o-", label="mean max reward (the paper's score)" if args.task.startswith("pusht")
                else "mean max reward (stages reached / all)")
        if curve[0]["mean_max_coverage"] is not None:
            ax.plot(xs, [c["mean_max_coverage"] for c in curve], "s--", label="mean max coverage")
        ax.plot(xs, [c["success_rate"] for c in curve], "^:", label="success rate")
        ax.set_xlabel("training wall-clock minutes")
        ax.set_ylim(0, 1)
        ax.set_title(f"{args.task}, {args.policy} ({args.scheduler}), {val_n} validation seeds")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[dev]')")
    print(f"\n{args.task} {args.policy}: score {final['mean_max_reward']:.3f}, success {final['success_rate']:.2f} "
          f"after {final['train_minutes']:.1f} training minutes -> {out}")


if __name__ == "__main__":
    main()
