"""The real-time control loop against lockstep evaluation, with added inference delay.

    python benchmarks/deploy_rt.py --checkpoint runs/act_lift/checkpoints/latest.pt --episodes 50

Evaluates the checkpoint in lockstep (``protege-eval``: inference takes no simulated time), then
deploys it with ``protege-deploy robot=sim`` (the MuJoCo UR5e on the wall clock, cameras in reader
threads, inference in a worker, safety filter and watchdogs) on the same seeds with an added
inference delay of 0, 100 and 300 ms, and once more with the policy compiled (``compile=true``)
and no added delay. Prints a table and writes ``results/deploy_rt.json``:
success with its 95% Wilson interval per setting, cycle period jitter (p50, p99, max), the
observation-to-action latency, late actions dropped per minute, safety clips and the largest
commanded TCP speed (against the limit), with the command, commit, machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from machine import machine, provenance, write_result

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE.parent))
from protege.deploy.eval import wilson_interval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--delays", type=float, nargs="*", default=[0.0, 0.1, 0.3],
                    help="added inference delays, s (none: only the lockstep evaluation, to keep with --skip-lockstep "
                         "when the real-time runs must wait for the machine to be free)")
    ap.add_argument("--compiled-delays", type=float, nargs="*", default=[0.0],
                    help="added inference delays, s, to deploy with the policy compiled (compile=true) too")
    ap.add_argument("--scheduler", default="receding_horizon", help="how chunks are executed (deploy's default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for inference (and OMP_NUM_THREADS)")
    ap.add_argument("--start-max-distance", type=float, default=0.10,
                    help="the start gate's limit, m (robot.safety.start_max_distance; the config's 0.05 refuses "
                         "a lightly trained policy whose first target overshoots)")
    ap.add_argument("--start-ramp", action="store_true",
                    help="a first target beyond the start gate is reached slowly (loop.start_ramp=true) instead of "
                         "stopping the run (exit 3), so every seed runs")
    ap.add_argument("--run-dir", default="runs/bench-deploy")
    ap.add_argument("--out", default=str(HERE / "results" / "deploy_rt.json"))
    ap.add_argument("--skip-lockstep", action="store_true", help="keep the lockstep result of an earlier run")
    args = ap.parse_args()
    run_dir, out = Path(args.run_dir), Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MUJOCO_GL": "egl",
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}  # the venv's tools first; gcc for compile=true

    lockstep = None
    if args.skip_lockstep and out.exists():  # only an evaluation of the same checkpoint, scheduler and seeds
        old = json.loads(out.read_text())
        if (old.get("checkpoint"), old.get("scheduler"), old.get("seed")) == (args.checkpoint, args.scheduler, args.seed) \
                and (old.get("lockstep") or {}).get("episodes") == args.episodes:
            lockstep = old["lockstep"]
    if lockstep is None:
        eval_dir = run_dir / "lockstep"
        subprocess.run([str(BIN / "protege-eval"), f"checkpoint={args.checkpoint}", f"n_episodes={args.episodes}",
                        f"seed={args.seed}", f"scheduler={args.scheduler}", "n_videos=0", f"out_dir={eval_dir}"],
                       check=True, env=env)
        r = json.loads((eval_dir / "eval.json").read_text())
        n_ok = sum(e["success"] for e in r["episodes"])
        lockstep = {"successes": n_ok, "episodes": r["n_episodes"], "success_rate": r["success_rate"],
                    "success_rate_ci95": r["success_rate_ci95"], "seeds": [e["seed"] for e in r["episodes"]],
                    "succeeded": [e["seed"] for e in r["episodes"] if e["success"]],
                    **provenance()}  # kept with it by a later --skip-lockstep run

    rows = []
    for delay, compiled in [(d, False) for d in args.delays] + [(d, True) for d in args.compiled_delays]:
        d = run_dir / (f"delay_{int(round(delay * 1000))}ms" + ("_compiled" if compiled else ""))
        cmd = [str(BIN / "protege-deploy"), f"checkpoint={args.checkpoint}", "robot=sim", f"episodes={args.episodes}",
               f"seed={args.seed}", f"scheduler={args.scheduler}", f"inference_delay_s={delay}", f"run_dir={d}",
               "stop_key=false", f"torch_threads={args.threads}", f"compile={str(compiled).lower()}",
               f"robot.safety.start_max_distance={args.start_max_distance}", f"loop.start_ramp={str(args.start_ramp).lower()}"]
        if (d / "deploy.jsonl").exists():
            (d / "deploy.jsonl").unlink()
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL)
        if not (d / "summary.json").exists():
            sys.exit(f"protege-deploy wrote no summary (exit code {p.returncode}): {' '.join(cmd)}")
        s = json.loads((d / "summary.json").read_text())
        n = len(s["episode_results"])
        ok = sum(e["success"] for e in s["episode_results"])
        rows.append({
            "inference_delay_s": delay, "compiled": compiled, "exit_code": p.returncode, "episodes": n, "successes": ok,
            "success_rate": ok / n, "success_rate_ci95": list(wilson_interval(ok, n)),
            "succeeded": [e["seed"] for e in s["episode_results"] if e["success"]],
            **{k: s[k] for k in ("cycles", "dt_ms", "period_jitter_ms", "cycle_lateness_ms", "obs_to_action_latency_ms",
                                 "dropped_actions", "dropped_per_minute", "clips", "max_cmd_speed", "tracking_error_mm",
                                 "minutes", "stops")},
        })

    from omegaconf import OmegaConf

    limit = OmegaConf.load(HERE.parent / "protege/configs/robot/sim.yaml").safety.max_tcp_speed
    write_result(out, "deploy_rt", checkpoint=args.checkpoint, scheduler=args.scheduler, seed=args.seed,
                 max_tcp_speed_limit=limit, start_max_distance=args.start_max_distance, start_ramp=args.start_ramp, torch_threads=args.threads,
                 lockstep=lockstep, realtime=rows)

    print(f"\n{args.checkpoint}, {args.scheduler}, {args.episodes} seeds from {args.seed}; {machine()}")
    print(f"lockstep: success {lockstep['successes']}/{lockstep['episodes']} "
          f"({lockstep['success_rate_ci95'][0]:.2f}-{lockstep['success_rate_ci95'][1]:.2f})")
    print(f"{'delay':>16} {'success':>9} {'95% CI':>11} {'jitter p50/p99/max ms':>24} {'latency p50/p99/max ms':>25} "
          f"{'dropped/min':>12} {'max cmd m/s':>12}")
    nan = {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    for r in rows:
        j, lat = r["period_jitter_ms"] or nan, r["obs_to_action_latency_ms"] or nan
        ci = r["success_rate_ci95"]
        print(f"{r['inference_delay_s'] * 1000:>5.0f}ms{' compiled' if r['compiled'] else ' eager   '} {r['successes']:>4}/{r['episodes']:<4} {ci[0]:.2f}-{ci[1]:.2f} "
              f"{j['p50']:>8.1f}/{j['p99']:.1f}/{j['max']:.1f} {lat['p50']:>10.0f}/{lat['p99']:.0f}/{lat['max']:.0f} "
              f"{r['dropped_per_minute'] or 0:>12.1f} {r['max_cmd_speed'] or 0:>12.3f}"
              + (f"  stopped: {r['stops']}" if r["exit_code"] else ""))


if __name__ == "__main__":
    main()
