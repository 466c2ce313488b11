"""HG-DAgger in simulation: does correcting a deployed policy help more than as many extra demonstrations?

Round 0: ACT trained on a few scripted demonstrations of ``sim_lift`` (seeds 0..). Each round then
deploys the latest policy in real time (``protege-deploy robot=sim teleop=scripted record=...``):
the scripted expert takes over when the commanded TCP strays from its plan and gives control back
after a while; its corrections are recorded with per-step labels. Two policies are retrained from
scratch with the same budget each round:

- **HG-DAgger**: the demonstrations plus every round's rollouts, learning only the operator's
  corrections (``data.rollouts=human``);
- **more demonstrations**: the demonstrations plus new scripted demonstrations (seeds 500000..)
  holding at least as many steps as the operator's corrections so far.

Both are evaluated in lockstep on the same test seeds (100000..), which no choice here looks at (the
settings below are fixed before any run). Prints a table, writes ``results/hg_dagger.json`` and the
rounds' plot ``results/hg_dagger.png``.

    python benchmarks/hg_dagger.py [--demos 10] [--rounds 2] [--deploy-episodes 8] [--steps 400] [--eval-episodes 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))
from machine import write_result  # noqa: E402

from protege.control.loop import StopReason  # noqa: E402

TEST_SEED = 100000      # evaluation (test) seeds: TEST_SEED, TEST_SEED + 1, ...
VAL_SEED = 110000       # validation seeds (--val-episodes): where settings are chosen
DEPLOY_SEED = 300000    # deployment rounds' seeds
DEMO_SEED = 500000      # the baseline's extra demonstrations


# 0, and the watchdog stops (policy stalled, camera stale, robot fault, non-finite action, safety
# limit, teleop device lost): a watchdog may end a deployment round early; that is data, not failure
OK_EXITS = {0} | {int(r) for r in StopReason if r >= StopReason.POLICY_STALLED}


def sh(*args, log=None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if log is not None:
        log.write(f"$ {' '.join(map(str, args))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}\n")
        log.flush()
    if p.returncode not in OK_EXITS:
        raise RuntimeError(f"{args[0]} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def steps_of(store: Path) -> int:
    from protege.data.store import EpisodeStore

    return EpisodeStore(store).n_steps


def human_steps(stores: list[Path]) -> int:
    import numpy as np

    from protege.data.store import EpisodeStore

    total = 0
    for s in stores:
        if Path(s).exists() and "intervention" in (st := EpisodeStore(s)).keys:
            total += int(np.asarray(st._array("intervention")[:]).sum())
    return total


NEAR_BINS_CM = (0, 2, 4)  # the test seeds by their cube's distance to the nearest round-0 demonstration's


class CubeCoverage:
    """Each evaluated seed's cube distance to the nearest cube of the round-0 demonstrations, and
    success counted per distance bin: does a policy succeed beyond the positions it was shown?"""

    def __init__(self, demos: Path):
        from protege.data.store import EpisodeStore
        from protege.sim.env import SimEnv

        self.env = SimEnv("lift", image_size=32, video_size=32)
        self.xy: dict[int, object] = {}  # seed -> its cube's (x, y) m: every policy is evaluated on the same seeds
        self.demo_xy = [self.cube_xy(m["seed"]) for m in EpisodeStore(demos).episode_meta]

    def cube_xy(self, seed: int):
        if seed not in self.xy:
            self.env.reset(seed)
            self.xy[seed] = self.env.task_state()["cube"].position[:2].copy()
        return self.xy[seed]

    def by_distance(self, episodes: list[dict]) -> dict[str, list[int]]:
        """``{"0-2 cm": [successes, episodes], ...}`` over the evaluation's episodes."""
        import numpy as np

        edges = [*NEAR_BINS_CM, np.inf]
        out = {f"{lo}-{hi} cm" if hi < np.inf else f">={lo} cm": [0, 0] for lo, hi in zip(edges[:-1], edges[1:])}
        for e in episodes:
            d = 100 * min(float(np.linalg.norm(self.cube_xy(e["seed"]) - xy)) for xy in self.demo_xy)
            key = list(out)[int(np.searchsorted(edges, d, side="right")) - 1]
            out[key][0] += int(e["success"])
            out[key][1] += 1
        return out


def operator_settings(deploy_dir: Path) -> dict:
    """The scripted operator's settings as the deployment used them (its run folder's config)."""
    from omegaconf import OmegaConf

    op = OmegaConf.load(deploy_dir / "config.yaml").teleop.operator
    return {k: op[k] for k in ("takeover_m", "window_s", "give_back_s")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demos", type=int, default=10, help="scripted demonstrations of round 0")
    ap.add_argument("--rounds", type=int, default=2, help="deploy-record-retrain rounds after round 0")
    ap.add_argument("--deploy-episodes", type=int, default=8, help="real-time episodes per round")
    ap.add_argument("--steps", type=int, default=400, help="ACT training steps, from scratch, every training")
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--val-episodes", type=int, default=0,
                    help="also evaluate every policy on this many validation seeds (from VAL_SEED): tune the operator "
                         "or the budget on these, then run the test seeds once")
    ap.add_argument("--work", default="runs/hg_dagger")
    ap.add_argument("--out", default=str(HERE / "results" / "hg_dagger.json"))
    ap.add_argument("--resume", action="store_true",
                    help="keep what an interrupted run of the same settings finished in --work (demonstrations, trainings, evaluations)")
    args = ap.parse_args()
    work = Path(args.work)
    if not args.resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "commands.log", "a")
    reused: dict[str, str] = {}  # what --resume took from an earlier invocation, and when that made it

    def reuse(name: str, path: Path) -> None:
        reused[name] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))
    train_common = ["task=sim_lift", "policy=act", f"train.steps={args.steps}", "train.batch_size=32", "train.val_ratio=0",
                    "train.progress=false", "train.checkpoint_every=100000"]
    t_start = time.monotonic()

    def train(name: str, datasets: list[Path], extra=()) -> Path:
        run_dir = work / name
        done = run_dir / "checkpoints" / "latest.pt"
        if args.resume and done.exists():
            from protege.policies.checkpoint import read_checkpoint

            if read_checkpoint(done)["train_state"]["step"] == args.steps:
                reuse(f"train {name}", done)
                return done
        shutil.rmtree(run_dir, ignore_errors=True)
        sh(BIN / "protege-train", *train_common, f"dataset=[{','.join(map(str, datasets))}]", f"run_dir={run_dir}", *extra, log=log)
        return run_dir / "checkpoints" / "latest.pt"

    def evaluate(ckpt: Path, name: str) -> dict:
        out = work / f"eval-{name}"
        if args.resume and (out / "eval.json").exists():
            reuse(f"eval {name}", out / "eval.json")
        else:
            sh(BIN / "protege-eval", f"checkpoint={ckpt}", f"n_episodes={args.eval_episodes}", f"seed={TEST_SEED}", "n_videos=0",
               f"out_dir={out}", log=log)
        r = json.loads((out / "eval.json").read_text())
        row = {"success_rate": r["success_rate"], "success_rate_ci95": r["success_rate_ci95"],
               "successes": round(r["success_rate"] * r["n_episodes"]), "n_episodes": r["n_episodes"],
               "seeds": [TEST_SEED, TEST_SEED + args.eval_episodes - 1],
               "by_cube_distance_to_demos": coverage.by_distance(r["episodes"])}
        if args.val_episodes:
            vout = work / f"val-{name}"
            if not (args.resume and (vout / "eval.json").exists()):
                sh(BIN / "protege-eval", f"checkpoint={ckpt}", f"n_episodes={args.val_episodes}", f"seed={VAL_SEED}",
                   "n_videos=0", f"out_dir={vout}", log=log)
            v = json.loads((vout / "eval.json").read_text())
            row["validation"] = {"success_rate": v["success_rate"], "n_episodes": v["n_episodes"],
                                 "seeds": [VAL_SEED, VAL_SEED + args.val_episodes - 1],
                                 "by_cube_distance_to_demos": coverage.by_distance(v["episodes"])}
        return row

    demos = work / "demos.zarr"
    if args.resume and demos.exists():
        reuse("demonstrations", demos)
    else:
        shutil.rmtree(demos, ignore_errors=True)
        sh(BIN / "protege-record", "robot=sim", "task=lift", "teleop=scripted", f"episodes={args.demos}", f"out={demos}", "seed=0", log=log)
    coverage = CubeCoverage(demos)
    ckpt = train("round0", [demos])
    r0 = evaluate(ckpt, "round0")
    rounds = [{"round": 0, "demo_steps": steps_of(demos), "human_steps": 0, "hg_dagger": r0, "more_demos": r0}]
    print(f"round 0: {r0['successes']}/{r0['n_episodes']} with {args.demos} demonstrations", flush=True)
    rollouts: list[Path] = []
    hg_ckpt = ckpt
    extra_demos = work / "extra_demos.zarr"
    for r in range(1, args.rounds + 1):
        roll = work / f"rollouts{r}.zarr"
        if args.resume and (work / f"deploy{r}" / "summary.json").exists():
            reuse(f"deploy round {r}", work / f"deploy{r}" / "summary.json")
        else:
            shutil.rmtree(roll, ignore_errors=True)
            sh(BIN / "protege-deploy", f"checkpoint={hg_ckpt}", "robot=sim", "task=lift", "teleop=scripted",
               f"episodes={args.deploy_episodes}", f"seed={DEPLOY_SEED + 1000 * r}", f"record={roll}",
               f"run_dir={work / f'deploy{r}'}", "stop_key=false", "robot.safety.start_max_distance=1.0",
               "robot.safety.start_max_angle=3.0", "loop.max_frame_age_s=1.0", log=log)  # a far first target: at the filter's limits
        if roll.exists():
            rollouts.append(roll)
        human = human_steps(rollouts)
        summary = json.loads((work / f"deploy{r}" / "summary.json").read_text())
        hg_ckpt = train(f"hg{r}", [demos, *rollouts], ["data.rollouts=human"]) if rollouts else hg_ckpt
        hg = evaluate(hg_ckpt, f"hg{r}")
        # the baseline: as many extra scripted demonstration steps as the operator gave, at least
        have = steps_of(extra_demos) if extra_demos.exists() else 0
        k = 0
        while have < human:
            n = max(1, round((human - have) / 36))  # a lift demonstration is about 36 steps
            sh(BIN / "protege-record", "robot=sim", "task=lift", "teleop=scripted", f"episodes={n}", f"out={extra_demos}",
               f"seed={DEMO_SEED + 100 * r + 10 * k}", log=log)
            have, k = steps_of(extra_demos), k + 1
        more = evaluate(train(f"demos{r}", [demos, extra_demos] if human else [demos]), f"demos{r}")
        rounds.append({"round": r, "demo_steps": steps_of(demos), "human_steps": human, "extra_demo_steps": have,
                       "deploy": {"episodes": args.deploy_episodes, "successes": summary["successes"],
                                  "interventions": summary["interventions"]["total"],
                                  "takeover_start_s": sorted(g["start_s"] for e in summary["interventions"]["episodes"].values()
                                                             for g in e["segments"]),
                                  "human_fraction": summary["interventions"]["human_fraction"]},
                       "hg_dagger": hg, "more_demos": more})
        print(f"round {r}: HG-DAgger {hg['successes']}/{hg['n_episodes']} ({human} corrected steps); "
              f"more demonstrations {more['successes']}/{more['n_episodes']} ({have} extra steps)", flush=True)
    print(f"\n{'round':>5} {'human steps':>12} {'HG-DAgger':>12} {'+demos':>12}")
    for x in rounds:
        print(f"{x['round']:>5} {x['human_steps']:>12} {x['hg_dagger']['successes']:>5}/{x['hg_dagger']['n_episodes']:<6} "
              f"{x['more_demos']['successes']:>5}/{x['more_demos']['n_episodes']:<6}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = [x["round"] for x in rounds]
        for key, label in (("hg_dagger", "HG-DAgger (operator's corrections)"), ("more_demos", "as many extra demonstration steps")):
            ys = [x[key]["success_rate"] for x in rounds]
            lo = [x[key]["success_rate"] - x[key]["success_rate_ci95"][0] for x in rounds]
            hi = [x[key]["success_rate_ci95"][1] - x[key]["success_rate"] for x in rounds]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.set_xlabel("round")
        ax.set_ylabel(f"success, {args.eval_episodes} test seeds")
        ax.set_xticks(xs)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(Path(args.out).with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    write_result(args.out, "hg_dagger", task="sim_lift", policy="act", demos=args.demos, rounds=rounds,
                 deploy_episodes=args.deploy_episodes, train_steps=args.steps, eval_seeds=[TEST_SEED, TEST_SEED + args.eval_episodes - 1],
                 operator=operator_settings(work / "deploy1") if args.rounds else None, minutes=round((time.monotonic() - t_start) / 60, 1),
                 reused=reused)
    return 0


if __name__ == "__main__":
    sys.exit(main())
