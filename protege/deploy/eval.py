"""Evaluate a policy in simulation: ``protege-eval checkpoint=<file> n_episodes=50``.

Episodes run in lockstep batches (one policy call serves every live episode), each from its own
seed; observations (the simulator's devices through the shared observation assembly) are mapped to
the policy's keys by the task's observation spec, stacked over ``n_obs_steps`` (the first
observation repeated at the start, as in training's edge padding) and actions are scheduled by the
same time-based schedulers as the real-time control loop (receding horizon or temporal
ensembling), on the simulated clock: inference takes no simulated time. Reports per-seed and mean max reward (the PushT
"score": min(coverage / 0.95, 1)), max coverage and success rate, as JSON, plus mp4s of the first
rollouts. For staged tasks (sim lift, ...) each episode also records the step at which it first
reached each stage and the stage it ended in, to tell where failed episodes got stuck.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..errors import job
from ..data.dataset import obs_from_step
from ..policies.base import Policy
from ..policies.checkpoint import load_policy
from ..policies.onednn import describe, onednn_matmul
from ..policies.tensors import obs_to_torch, select_device
from ..control.schedulers import build_scheduler
from ..configs.checks import check_settings

DEFAULT_SCHEDULER = {"_target_": "protege.control.schedulers.RecedingHorizon", "n_action_steps": None, "blend_steps": 0}

log = logging.getLogger("protege.eval")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial success rate (Wilson, JASA 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write RGB frames (H, W, 3) uint8 as an mp4 (OpenCV's mp4v codec)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def stage_counts(episodes: list[Mapping[str, Any]]) -> dict[str, int] | None:
    """How many episodes ended in each stage (successes count as ``success``), for staged tasks
    (sim lift, pick_place, stack); None for tasks without stages (PushT)."""
    if not episodes or "final_stage" not in episodes[0]:
        return None
    counts: dict[str, int] = {}
    for e in episodes:
        key = "success" if e["success"] else e["final_stage"]
        counts[key] = counts.get(key, 0) + 1
    return counts


class SimEvaluator:
    """Roll a policy out in a simulated task for ``n_episodes`` seeds.

    Args:
        env: hydra config of the environment (``_target_`` and its arguments), e.g. the task's ``env``.
        obs_spec: the task's observation spec (policy key -> store key).
        n_episodes: episodes, seeded ``seed, seed + 1, ...``.
        seed: first seed.
        scheduler: an entry of the ``scheduler`` config group (``_target_`` and parameters; see
            :func:`~protege.control.schedulers.build_scheduler`); default: receding horizon with
            the policy's n_action_steps and no blending (the paper's protocol).
        num_inference_steps: override the diffusion policy's DDIM steps (None: the policy's).
        batch_envs: episodes run in lockstep per policy call.
        n_videos: record N episodes as mp4 into ``video_dir``.
        videos: which: ``first`` (the first N episodes) or ``failed`` (the first N that fail, named
            with the stage they ended in: what went wrong, to watch).
        video_dir: where the mp4s go (required when n_videos > 0).
        fps: control rate, for the videos.
        progress: show a progress bar.
        on_step: called after every environment step as ``on_step(seed=, step=, obs=, action=,
            new_chunk=, info=, env=)``: the policy's latest observation frame before the step (dict
            of arrays), the action sent ((A,) float), whether a chunk was sampled for it, the step's
            info and the env; for step-by-step diagnosis (``benchmarks/trace_episode.py``).
    """

    def __init__(self, env: Mapping[str, Any], obs_spec: Mapping[str, Mapping], n_episodes: int = 50, seed: int = 100000,
                 num_inference_steps: int | None = None, scheduler: Mapping[str, Any] | None = None, batch_envs: int = 10,
                 n_videos: int = 0, video_dir: str | None = None, fps: float = 10.0, progress: bool = False,
                 videos: str = "first", on_step: Callable[..., None] | None = None):
        self.env_cfg = OmegaConf.create(dict(env)) if not isinstance(env, DictConfig) else env
        self.obs_spec = {k: dict(v) for k, v in obs_spec.items()}
        self.n_episodes, self.seed, self.batch_envs = n_episodes, seed, max(1, batch_envs)
        self.num_inference_steps = num_inference_steps
        self.scheduler = scheduler if scheduler is not None else DEFAULT_SCHEDULER
        build_scheduler(self.scheduler, 1)  # fail on a bad scheduler before any rollout
        self.n_videos, self.video_dir, self.fps, self.progress = n_videos, video_dir, fps, progress
        if n_videos and not video_dir:
            raise ValueError("n_videos > 0 needs a video_dir")
        if videos not in ("first", "failed"):
            raise ValueError(f"videos must be 'first' or 'failed', got {videos!r}")
        self.videos, self.on_step = videos, on_step
        self.keys = sorted({s["source"] for s in self.obs_spec.values()})

    def __call__(self, policy: Policy) -> dict[str, Any]:
        """Roll ``policy`` out on every seed. Returns the report: n_episodes, mean_max_reward,
        mean_max_coverage (PushT) or None, success_rate with its 95% Wilson interval
        (success_rate_ci95), final_stages (staged tasks) or None, the per-seed ``episodes``,
        eval_seconds (wall time) and inference_seconds (the part spent in the policy's
        ``predict_action``; the rest is simulation, rendering and bookkeeping)."""
        t0 = time.perf_counter()
        if self.num_inference_steps is not None and policy.num_inference_steps is not None:
            policy.set_num_inference_steps(self.num_inference_steps)
        seeds = [self.seed + i for i in range(self.n_episodes)]
        episodes, inference_seconds = [], 0.0
        bar = tqdm(total=len(seeds), desc="eval", disable=not self.progress, dynamic_ncols=True)
        for i in range(0, len(seeds), self.batch_envs):
            filmed = sum("video" in e for e in episodes)
            batch, seconds = self._rollout(policy, seeds[i : i + self.batch_envs], first_index=i,
                                           videos_left=self.n_videos - filmed)
            episodes, inference_seconds = episodes + batch, inference_seconds + seconds
            bar.update(len(seeds[i : i + self.batch_envs]))
        bar.close()
        n_success = sum(e["success"] for e in episodes)
        lo, hi = wilson_interval(n_success, len(episodes))
        return {
            "n_episodes": len(episodes),
            "mean_max_reward": float(np.mean([e["max_reward"] for e in episodes])),
            "mean_max_coverage": float(np.mean([e["max_coverage"] for e in episodes])) if "max_coverage" in episodes[0] else None,
            "success_rate": n_success / len(episodes),
            "success_rate_ci95": [lo, hi],
            "eval_seconds": time.perf_counter() - t0,
            "inference_seconds": inference_seconds,
            "final_stages": stage_counts(episodes),
            "episodes": episodes,
        }

    @torch.no_grad()
    def _rollout(self, policy: Policy, seeds: list[int], first_index: int,
                 videos_left: int) -> tuple[list[dict[str, Any]], float]:
        """Run ``seeds`` in lockstep; returns their per-episode results and the seconds spent in
        ``predict_action``."""
        to = policy.n_obs_steps
        dt = 1.0 / self.fps
        envs = [hydra.utils.instantiate(self.env_cfg) for _ in seeds]
        image_keys = [k for k, s in self.obs_spec.items() if s.get("type") == "rgb"]
        history, scheds, results, frames, inference_seconds = [], [], [], {}, 0.0
        for j, (env, seed) in enumerate(zip(envs, seeds)):
            env.reset(seed)
            first = obs_from_step(env.observation(self.keys), self.obs_spec)
            history.append(deque([first] * to, maxlen=to))
            scheds.append(build_scheduler(self.scheduler, policy.n_action_steps, dt=dt))
            results.append({"seed": seed, "max_reward": 0.0, "success": False, "steps": 0})
            if (j if self.videos == "first" else 0) < videos_left:
                frames[j] = [env.render()]  # "failed": every episode is filmed, the failed ones kept
        policy.reset()
        live = list(range(len(envs)))
        while live:
            # each episode's time on its own control grid: step k observes at k * dt
            need = [j for j in live if scheds[j].needs_chunk(results[j]["steps"] * dt)]
            if need:
                # a compiled policy gets the batch it was compiled for (repeats of the last window), not a new shape
                rows = need + need[-1:] * max(0, (policy.compiled_batch_size or 0) - len(need))
                obs = {k: np.stack([np.stack([h[k] for h in history[j]]) for j in rows]) for k in self.obs_spec}
                t_inf = time.perf_counter()
                chunks = policy.predict_action(obs_to_torch(obs, image_keys, policy.device)).float().cpu().numpy()
                inference_seconds += time.perf_counter() - t_inf
                for j, chunk in zip(need, chunks):
                    t = results[j]["steps"] * dt
                    scheds[j].add_chunk(chunk, t_obs=t, now=t)
            for j in list(live):
                action = scheds[j].action_at((results[j]["steps"] + 1) * dt)
                if action is None:
                    raise RuntimeError(f"no action scheduled at step {results[j]['steps']} (scheduler {scheds[j].name})")
                reward, done, info = envs[j].step(action)
                if self.on_step is not None:
                    self.on_step(seed=seeds[j], step=results[j]["steps"], obs=history[j][-1], action=action,
                                 new_chunk=j in need, info=info, env=envs[j])
                r = results[j]
                r["steps"] += 1
                r["max_reward"] = max(r["max_reward"], reward)
                if "coverage" in info:  # PushT's goal coverage; other tasks report success only
                    r["max_coverage"] = max(r.get("max_coverage", 0.0), info["coverage"])
                r["success"] = r["success"] or info["success"]
                if "stage_name" in info:  # staged tasks: where each episode got to, and when
                    r.setdefault("stage_first_step", {}).setdefault(info["stage_name"], r["steps"])
                    r["final_stage"] = info["stage_name"]
                if j in frames:
                    frames[j].append(envs[j].render())
                if done:
                    live.remove(j)
                else:
                    history[j].append(obs_from_step(envs[j].observation(self.keys), self.obs_spec))
        for j, f in frames.items():
            name = f"episode_{first_index + j:03d}_seed{seeds[j]}"
            if self.videos == "failed":
                if results[j]["success"] or videos_left <= 0:
                    continue
                videos_left -= 1
                name += f"_{results[j].get('final_stage', 'failed')}"
            results[j]["video"] = str(write_mp4(Path(self.video_dir) / f"{name}.mp4", f, self.fps))
        for env in envs:
            env.close()
        return results, inference_seconds


def env_config(task: Mapping[str, Any], cfg: DictConfig) -> DictConfig:
    """The lockstep environment that evaluates ``task``: the task's own simulator (``task.env``,
    e.g. PushT) or else the robot backend's (``cfg.robot.env``, e.g. the MuJoCo UR5e), resolved
    against ``task`` and ``cfg.camera``.

    Raises:
        ValueError: the task names no simulator and the robot config has no lockstep ``env``.
    """
    if task.get("env"):
        return OmegaConf.create(task["env"])
    robot = cfg.get("robot")
    if robot is None or robot.get("env") is None:
        raise ValueError(f"task {task.get('name')!r} has no simulator of its own and robot={robot.get('name') if robot else None} "
                         "has no lockstep env to evaluate it in (use robot=sim)")
    root = OmegaConf.create({"task": OmegaConf.to_container(task) if isinstance(task, DictConfig) else dict(task),
                             "camera": OmegaConf.to_container(cfg.camera), "robot": OmegaConf.to_container(robot)})
    return OmegaConf.create(OmegaConf.to_container(root.robot.env, resolve=True))


def checkpoint_task(cfg: DictConfig, ckpt: Mapping[str, Any]) -> dict:
    """The task a checkpoint runs on: its own, or ``task=`` when that one has the same observations
    and fps (e.g. ``lift`` for a checkpoint trained on ``sim_lift``).

    Raises:
        ValueError: ``task=`` names a task with other observations or fps (says which).
    """
    trained = ckpt["config"]["task"]
    if cfg.get("task") is None:
        return trained
    task = OmegaConf.to_container(cfg.task, resolve=True)
    if task.get("obs") != trained.get("obs") or task.get("fps") != trained.get("fps"):
        diff = sorted(set(task.get("obs", {})) ^ set(trained.get("obs", {})))
        raise ValueError(f"task={task.get('name')} does not fit this checkpoint, trained on task {trained.get('name')!r}: "
                         + (f"the observations differ ({', '.join(diff)})" if diff else
                            "its observations or fps differ")
                         + "; leave task= out to use the checkpoint's own")
    return {**trained, **task}


def evaluate_checkpoint(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Run the evaluation that ``configs/eval.yaml`` describes; returns (report, report path)."""
    ckpt_path = Path(cfg.checkpoint)
    device = select_device(cfg.device)
    if cfg.env is not None and not (isinstance(cfg.env, DictConfig) and "_target_" in cfg.env):
        raise ValueError(f"env={cfg.env}: env overrides the task's environment config (a mapping with a _target_, "
                         "e.g. env._target_=protege.sim.env.SimEnv env.task=lift); to evaluate on another task use task=<name>")
    policy, ckpt = load_policy(ckpt_path, device=device, use_ema=cfg.use_ema)
    task = checkpoint_task(cfg, ckpt)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else ckpt_path.parent.parent / "eval" / ckpt_path.stem
    compile_seconds = None
    with onednn_matmul(cfg.onednn_matmul, device) as onednn:
        print(f"protege-eval: {describe(onednn, cfg.onednn_matmul, device)}", flush=True)
        if cfg.compile:
            print("protege-eval: compiling the policy for inference ...", flush=True)
            compile_seconds = policy.compile_for_inference(min(cfg.batch_envs, cfg.n_episodes))
            print(f"protege-eval: compiled in {compile_seconds:.0f} s", flush=True)
        torch.manual_seed(cfg.seed)
        evaluator = SimEvaluator(
            env=cfg.env if cfg.env else env_config(task, cfg), obs_spec=task["obs"], n_episodes=cfg.n_episodes, seed=cfg.seed,
            num_inference_steps=cfg.num_inference_steps, scheduler=cfg.scheduler, batch_envs=cfg.batch_envs,
            n_videos=cfg.n_videos, video_dir=str(out_dir / "videos"), fps=task.get("fps", 10), progress=True,
            videos=cfg.videos,
        )
        report = evaluator(policy)
    sched = build_scheduler(cfg.scheduler, policy.n_action_steps)
    report = {
        "checkpoint": str(ckpt_path), "task": task["name"], "policy": ckpt["policy"]["target"],
        "train_step": ckpt["train_state"]["step"], "train_minutes": ckpt["train_state"]["train_seconds"] / 60,
        "device": str(device), "use_ema": cfg.use_ema, "compiled": bool(cfg.compile), "compile_seconds": compile_seconds,
        "onednn_matmul": onednn,
        "scheduler": sched.name,
        "scheduler_config": OmegaConf.to_container(cfg.scheduler, resolve=True),
        "n_action_steps": getattr(sched, "n_action_steps", None),
        "num_inference_steps": policy.num_inference_steps,
        **report,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "eval.json"
    path.write_text(json.dumps(report, indent=2))
    return report, path


def main() -> None:
    """Evaluate a checkpoint in simulation; see ``protege-eval --help`` and ``configs/eval.yaml``.
    Expected errors (not a checkpoint, a bad override) are one line and exit 2."""
    from ..errors import run

    run("protege-eval", _hydra_main)


@hydra.main(config_path="../configs", config_name="eval", version_base=None)
@job
def _hydra_main(cfg: DictConfig) -> None:
    check_settings(cfg, "eval")
    report, path = evaluate_checkpoint(cfg)
    lo, hi = report["success_rate_ci95"]
    coverage = f"mean max coverage {report['mean_max_coverage']:.3f}, " if report["mean_max_coverage"] is not None else ""
    print(f"{report['task']}: {report['n_episodes']} episodes, mean max reward {report['mean_max_reward']:.3f}, "
          f"{coverage}success {report['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f})")
    if report["final_stages"]:
        print("episodes by final stage: " + ", ".join(f"{k} {v}" for k, v in report["final_stages"].items()))
    print(f"time: {report['eval_seconds']:.0f} s, of which {report['inference_seconds']:.1f} s in the policy "
          "(the rest simulation and rendering)"
          + (f"; compilation before it {report['compile_seconds']:.0f} s" if report["compile_seconds"] is not None else ""))
    print(f"report: {path}")
    videos = [e["video"] for e in report["episodes"] if "video" in e]
    if videos:
        print(f"videos: {Path(videos[0]).parent}")


if __name__ == "__main__":
    main()
