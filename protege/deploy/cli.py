"""``protege-deploy``: run a trained policy on a robot in real time (see ``configs/deploy.yaml``),
and ``protege-deploy report <run_dir>``."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from ..errors import job, root_cause, run as run_cli
from ..data.writer import BackgroundWriter
from ..policies.checkpoint import load_policy
from ..policies.onednn import describe, onednn_matmul
from ..policies.tensors import select_device
from ..robot.observation import ObservationAssembler
from ..control.cyclelog import CycleLog, read_log
from ..control.inference import PolicyRunner
from ..control.loop import ActionSource, ControlLoop, EpisodeResult, Hooks, LoopSettings, StopReason
from ..control.operator import StopKey
from ..control.safety import SafetyFilter, SafetyLimits
from ..control.schedulers import build_scheduler
from ..robot.backend import Backend, EpisodicBackend, camera_info
from .eval import checkpoint_task
from .report import format_summary, main as report_main, summarize
from ..configs.checks import check_settings

log = logging.getLogger("protege.deploy")


class ConfigError(ValueError):
    """A deployment that must not start: bad settings, or a policy that does not fit the robot."""


def deploy(cfg: DictConfig) -> int:
    """Run ``cfg.episodes`` episodes; returns the exit code (:class:`StopReason`)."""
    device = select_device(cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    with onednn_matmul(cfg.onednn_matmul, device) as on:  # a bad setting fails here, before the robot connects
        print(f"protege-deploy: {describe(on, cfg.onednn_matmul, device)}", flush=True)
        return _deploy(cfg, device)


def _deploy(cfg: DictConfig, device: torch.device) -> int:
    policy, ckpt = load_policy(cfg.checkpoint, device=device, use_ema=cfg.use_ema)
    task = checkpoint_task(cfg, ckpt)
    OmegaConf.set_struct(cfg, False)
    cfg.task = task
    if cfg.num_inference_steps is not None:
        policy.set_num_inference_steps(cfg.num_inference_steps)
    if cfg.compile:  # before the robot is even connected: the first chunk must not wait for it
        print("protege-deploy: compiling the policy for inference ...", flush=True)
        print(f"protege-deploy: compiled in {policy.compile_for_inference():.0f} s", flush=True)
    # everything that can be checked is checked before the arm moves
    limits = SafetyLimits.from_config(cfg.robot.safety)
    fps = float(task["fps"])
    settings = LoopSettings(control_hz=fps, n_obs_steps=policy.n_obs_steps, **cfg.loop)
    scheduler = build_scheduler(cfg.scheduler, policy.n_action_steps, dt=1.0 / fps, offset=cfg.action_offset)
    safety = SafetyFilter(limits, 1.0 / fps)
    if "backend" not in cfg.robot:
        raise ConfigError(f"robot={cfg.robot.get('name')} has no backend to deploy on")
    runner = PolicyRunner(policy, task["obs"])
    operator = _device_operator(cfg) if cfg.get("teleop") is not None and "operator" not in cfg.teleop else None
    try:
        backend = hydra.utils.instantiate(cfg.robot.backend)
    except InstantiationException as e:
        if operator is not None:
            operator.close()
        raise ConfigError(f"robot={cfg.robot.get('name')}: {root_cause(e)}") from e
    if cfg.get("teleop") is not None and "operator" in cfg.teleop:  # a scripted operator plans from the simulator
        try:
            operator = hydra.utils.instantiate(cfg.teleop.operator, backend=backend)
        except InstantiationException as e:
            backend.close()
            raise ConfigError(f"teleop={cfg.teleop.name}: {root_cause(e)}") from e
    if not isinstance(backend, Backend):
        backend.close()
        raise ConfigError(f"robot={cfg.robot.get('name')}: its backend {type(backend).__name__} is not a "
                          "protege.robot.backend.Backend (robot, gripper, cameras, clock, time_limit_s, close)")
    writer = loop = stop_key = view = None
    results: list[EpisodeResult] = []
    run_dir = Path(cfg.run_dir)
    try:
        assembler = ObservationAssembler(backend.robot, backend.gripper, backend.cameras, **cfg.robot.get("latency", {}))
        missing = set(runner.store_keys) - set(assembler.store_keys)
        if missing:
            raise ConfigError(f"the policy reads {sorted(missing)}, which robot={cfg.robot.name} camera={cfg.camera.name} "
                              f"does not give (it gives {list(assembler.store_keys)})")
        episodic = isinstance(backend, EpisodicBackend)
        time_limit = float(cfg.time_limit_s or backend.time_limit_s)
        if cfg.record:
            writer = BackgroundWriter(cfg.record, fps=fps, key_meta=assembler.key_meta, image_codec=cfg.image_codec)
        # a device that reads this terminal (the keyboard) owns it: Ctrl-C still stops the arm
        stop_key = StopKey(keys=not getattr(getattr(operator, "device", None), "reads_terminal", False)) if cfg.stop_key else None
        if cfg.display:
            from ..control.liveview import LiveView

            view = LiveView(save=cfg.get("display_save"))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        hooks = Hooks(stop_requested=stop_key, status=backend.status if episodic else None,
                      on_step=(lambda obs, action: writer.add_step({**obs, "action": action})) if writer else None)
        loop = ControlLoop(backend.robot, backend.gripper, backend.cameras, backend.clock,
                           ActionSource(runner, runner.store_keys, inference_delay_s=cfg.inference_delay_s),
                           assembler, scheduler, safety, settings, hooks, log=CycleLog(run_dir / "deploy.jsonl"),
                           view=view, operator=operator)
        if operator is not None:
            print(f"protege-deploy: {operator.name} may take over at any moment "
                  f"({_takeover_hint(operator)}); every step is labelled policy or human", flush=True)
        print(f"protege-deploy: {task['name']} on robot={cfg.robot.name}, {cfg.episodes} episode(s) at {fps:g} Hz, "
              f"{scheduler.name}, log {run_dir / 'deploy.jsonl'}" + ("; stop: s, space, Esc or Ctrl-C" if stop_key else ""),
              flush=True)
        for i in range(cfg.episodes):
            seed = int(cfg.seed) + i
            t_start = backend.reset(seed) if episodic else backend.clock.now()
            start_wall = time.time()
            res = loop.run_episode(t_start, time_limit, seed)
            results.append(res)
            print(f"episode {i + 1}/{cfg.episodes} seed {seed}: {'success' if res.success else 'no success'}, "
                  f"{res.steps} steps, {res.duration_s:.1f} s, {res.chunks} chunks, {res.dropped} late actions dropped, "
                  f"clips {res.clips or 'none'}" + (f"; stopped: {res.stop.name.lower()}: {res.message}"
                                                     if res.stop != StopReason.COMPLETED else ""), flush=True)
            if writer is not None:
                if res.steps:
                    success = res.success if episodic or operator is None else _ask_outcome(i + 1)
                    writer.commit(seed=seed, task=task["name"], source="policy_rollout", checkpoint=str(cfg.checkpoint),
                                  success=success, stop=res.stop.name.lower(), start_time=start_wall, steps=res.steps,
                                  cameras=camera_info(backend.cameras),
                                  **({"operator_device": operator.name} if operator is not None else {}))
                else:
                    writer.discard()
            if res.stop != StopReason.COMPLETED:
                break
    finally:
        if loop is not None:
            loop.close()
        if writer is not None:
            writer.close()
        if stop_key is not None:
            stop_key.close()
        if view is not None:
            view.close()
        if operator is not None and hasattr(operator, "close"):
            operator.close()
        backend.close()
    if not results:
        return int(StopReason.ERROR)
    summary = summarize(read_log(run_dir))
    summary["episode_results"] = [r.to_dict() for r in results]
    summary["success_rate"] = sum(r.success for r in results) / len(results)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"success {sum(r.success for r in results)}/{len(results)}; summary {run_dir / 'summary.json'}; "
          f"plots: protege-deploy report {run_dir}")
    return int(results[-1].stop)


def _device_operator(cfg: DictConfig):
    """The teleop device that may take over (opened now: a missing device is refused before the arm
    moves). Velocity devices lose their keep button (recording's) and their terminal keys."""
    from ..control.inference import ActionSourceLost
    from ..control.operator import DeviceOperator

    dev = cfg.teleop.device
    extra = {k: v for k, v in (("keep_button", None), ("keys", False)) if k in dev or "keep_button" in dev}
    try:
        device = hydra.utils.instantiate(dev, **extra)
        if hasattr(device, "reader"):
            device.reader.start()
        return DeviceOperator(device)
    except (InstantiationException, ActionSourceLost, ValueError) as e:
        raise ConfigError(f"teleop={cfg.teleop.name}: {root_cause(e)}") from e


def _takeover_hint(operator) -> str:
    device = getattr(operator, "device", None)
    if getattr(device, "reads_terminal", False):
        return "t takes over and gives back"
    if getattr(device, "takeover_button", None) is not None:
        return f"button {device.takeover_button} takes over and gives back"
    return "scripted"


def _ask_outcome(episode: int) -> bool | None:
    """The operator's verdict on a real arm's episode (y / n), None when nobody can be asked."""
    if not sys.stdin.isatty():
        return None
    while True:
        answer = input(f"episode {episode}: success? [y/n] ").strip().lower()
        if answer in ("y", "n"):
            return answer == "y"


@hydra.main(config_path="../configs", config_name="deploy", version_base=None)
@job
def _hydra_main(cfg: DictConfig) -> None:
    check_settings(cfg, "deploy")
    sys.exit(deploy(cfg))


def main() -> None:
    """Entry point: ``protege-deploy report <run_dir>`` or a deployment (hydra overrides)."""
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        sys.exit(report_main(sys.argv[2:]))
    run_cli("protege-deploy", _hydra_main)  # expected errors (ConfigError, CheckpointError, ...): one line, exit 2


if __name__ == "__main__":
    main()
