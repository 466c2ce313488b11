"""``protege-record``: record demonstrations into an episode store (see ``configs/record.yaml``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..data.writer import BackgroundWriter
from .session import record


@hydra.main(config_path="../configs", config_name="record", version_base=None)
def main(cfg: DictConfig) -> None:
    """Record ``episodes`` demonstrations of ``task`` with the ``teleop`` device into ``out``."""
    if cfg.robot.get("env") is None:
        raise SystemExit(f"protege-record: robot={cfg.robot.name} has no recording environment yet: recording "
                         "works in simulation (robot=sim); recording on a real arm is not implemented (issue 9)")
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
    print(f"kept {len(report.kept)} of {report.attempts} attempts ({report.discarded} discarded), {report.steps} steps, "
          f"{report.episodes_per_minute:.1f} episodes/min -> {cfg.out} ({len(committed)} episodes written)")
    if len(report.kept) < cfg.episodes:
        print(f"warning: asked for {cfg.episodes} episodes, kept {len(report.kept)}")


if __name__ == "__main__":
    main()
