"""``protege-record``: record demonstrations into an episode store (see ``configs/record.yaml``)."""

from __future__ import annotations

import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from ..errors import job, root_cause
from ..data.writer import BackgroundWriter
from ..control.operator import StopKey
from ..robot.interfaces import DeviceError
from ..robot.observation import ObservationAssembler
from .live import record_live
from .velocity import TeleopDeviceLost
from .session import record
from ..configs.checks import check_settings


def _summary(report, cfg: DictConfig, committed: list[int]) -> None:
    print(f"kept {len(report.kept)} of {report.attempts} attempts ({report.discarded} discarded), {report.steps} steps, "
          f"{report.episodes_per_minute:.1f} episodes/min -> {cfg.out} ({len(committed)} episodes written)")


def _record_sim(cfg: DictConfig) -> int:
    """Lockstep (or paced) recording in the simulator's environment, with its success check."""
    if cfg.display:
        print("protege-record: display=true shows a person's recording through the control loop; the scripted "
              "expert records in lockstep without it (look at the store afterwards: protege-data view)", file=sys.stderr)
    env = hydra.utils.instantiate(cfg.robot.env, **({"clock": "realtime"} if cfg.teleop.realtime else {}))
    device = hydra.utils.instantiate(cfg.teleop.device)
    writer = BackgroundWriter(cfg.out, fps=cfg.task.fps, key_meta=getattr(env, "key_meta", None),
                              image_codec=cfg.image_codec)
    try:
        report = record(env, device, writer, cfg.episodes, seed=cfg.seed, task=cfg.task.name, operator=cfg.operator,
                        keep=cfg.keep, realtime=cfg.teleop.realtime, fps=cfg.task.fps, max_attempts=cfg.max_attempts)
    finally:
        committed = writer.close()
        getattr(device, "close", lambda: None)()
        env.close()
    _summary(report, cfg, committed)
    if len(report.kept) < cfg.episodes:
        print(f"warning: asked for {cfg.episodes} episodes, kept {len(report.kept)}")
    return 0


def _record_live(cfg: DictConfig) -> int:
    """Recording on a live robot through the real-time control loop (:mod:`protege.teleop.live`)."""
    if cfg.teleop.name == "scripted":
        print(f"protege-record: teleop=scripted needs the simulator's object poses; on robot={cfg.robot.name} "
              "record with a human device (teleop=keyboard, spacemouse, gamepad) and task=real", file=sys.stderr)
        return 2
    if "backend" not in cfg.robot:
        print(f"protege-record: robot={cfg.robot.get('name')} has neither an environment nor a backend", file=sys.stderr)
        return 2
    try:  # the device's settings are checked and the device opened before the arm is connected
        device = hydra.utils.instantiate(cfg.teleop.device)
        if hasattr(device, "reader"):
            device.reader.start()
    except (InstantiationException, TeleopDeviceLost, ValueError) as e:
        print(f"protege-record: teleop={cfg.teleop.name}: {root_cause(e)}", file=sys.stderr)
        return 2
    try:
        backend = hydra.utils.instantiate(cfg.robot.backend)
    except (InstantiationException, DeviceError) as e:
        getattr(device, "close", lambda: None)()
        print(f"protege-record: robot={cfg.robot.name}: {root_cause(e)}", file=sys.stderr)
        return 13
    writer = stop_key = view = None
    try:
        key_meta = ObservationAssembler(backend.robot, backend.gripper, backend.cameras).key_meta
        writer = BackgroundWriter(cfg.out, fps=cfg.task.fps, key_meta=key_meta, image_codec=cfg.image_codec)
        stop_key = StopKey(keys=False)  # the teleop device owns the keyboard; Ctrl-C stops the arm
        if cfg.display:
            from ..control.liveview import LiveView

            view = LiveView(save=cfg.display_save)
        time_limit = float(cfg.time_limit_s or backend.time_limit_s)
        print(f"protege-record: {cfg.task.name} on robot={cfg.robot.name} with teleop={cfg.teleop.name}, "
              f"{cfg.episodes} episode(s) of at most {time_limit:g} s at {cfg.task.fps:g} Hz -> {cfg.out}; "
              "Ctrl-C stops the arm", flush=True)
        report = record_live(backend, device, writer, cfg.episodes, fps=float(cfg.task.fps),
                             safety=OmegaConf.to_container(cfg.robot.safety, resolve=True), time_limit_s=time_limit,
                             task=cfg.task.name, operator=cfg.operator, keep=cfg.keep, device_name=cfg.teleop.name,
                             seed=cfg.seed,
                             latency=OmegaConf.to_container(cfg.robot.get("latency", {}), resolve=True),
                             max_attempts=cfg.max_attempts, stop_requested=stop_key, log_path=cfg.get("log"), view=view)
    finally:
        committed = writer.close() if writer is not None else []
        if stop_key is not None:
            stop_key.close()
        if view is not None:
            view.close()
        getattr(device, "close", lambda: None)()
        backend.close()
    _summary(report, cfg, committed)
    return int(report.stop)


@hydra.main(config_path="../configs", config_name="record", version_base=None)
@job
def _hydra_main(cfg: DictConfig) -> None:
    check_settings(cfg, "record")
    # a person in the loop (teleop.realtime) drives the arm through the real-time control loop, on
    # the simulator as on a real arm; the scripted expert steps the simulator in lockstep
    lockstep = cfg.robot.get("env") is not None and not (cfg.teleop.realtime and "backend" in cfg.robot)
    sys.exit(_record_sim(cfg) if lockstep else _record_live(cfg))


def main() -> None:
    """Record ``episodes`` demonstrations of ``task`` with the ``teleop`` device into ``out``.
    Expected errors (a bad override, a store of another schema) are one line and exit 2."""
    from ..errors import run

    run("protege-record", _hydra_main)


if __name__ == "__main__":
    main()
