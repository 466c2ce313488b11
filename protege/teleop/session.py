"""The recording session: a teleop device drives an environment at the control rate, and every
step goes to the episode store through the background writer.

Episode life cycle: start (reset from a seed), run until the device asks to stop or the episode
ends (success or time limit), then keep or discard; quit ends the session. A scripted expert
decides by itself (keep successful episodes); a human decides with keys.

The environment speaks the store's schema: ``reset(seed)``, ``observation() -> {key: array}``,
``step(action) -> (reward, done, info)`` with ``info["success"]``; the simulator's task envs
and (later) the real-robot env implement it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ..data.writer import BackgroundWriter
from ..robot.backend import camera_info

KEEP, DISCARD, QUIT = "keep", "discard", "quit"


class TeleopDevice(Protocol):
    """Anything that turns an operator (or a script) into actions for an environment."""

    def reset(self, seed: int, obs: dict[str, np.ndarray], task_state: Any = None) -> None:
        """A new episode starts: the env was just reset with ``seed``; ``obs`` is its first
        observation, ``task_state`` what the simulator knows of the objects (None on a real arm)."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The action for this control step, in the env's action layout."""

    def poll(self) -> str | None:
        """A pending life-cycle request (``keep``, ``discard``, ``quit``) or None."""


@dataclass
class SessionReport:
    kept: list[int] = field(default_factory=list)  # store indices of kept episodes
    discarded: int = 0
    attempts: int = 0
    steps: int = 0
    seconds: float = 0.0
    stop: int = 0      # a live robot: the watchdog's StopReason that ended the session (0: none)
    message: str = ""

    @property
    def episodes_per_minute(self) -> float:
        return 60.0 * len(self.kept) / self.seconds if self.seconds else 0.0


def record(env, device: TeleopDevice, writer: BackgroundWriter, episodes: int, seed: int = 0, task: str = "",
           operator: str = "", keep: str = "success", realtime: bool = False, fps: float = 10.0,
           max_attempts: int | None = None, progress: bool = True) -> SessionReport:
    """Record until ``episodes`` are kept, the device quits, or ``max_attempts`` are used.

    Args:
        env: an environment in the store's schema (see the module docstring).
        device: the teleop device.
        writer: where the steps go; episodes are committed or discarded through it.
        episodes: episodes to keep.
        seed: seed of the first attempt; attempt i uses ``seed + i``.
        keep: at the end of an episode that no key ended: ``success`` keeps successful ones,
            ``all`` keeps every one.
        realtime: unused; kept so old callers work (the env's clock paces the loop: lockstep or wall clock).
        max_attempts: give up after this many attempts (default ``3 * episodes``).

    Each step stores the observation, the action, the step's reward and ``timestamp`` (the env's own
    when it reports one, else s since the episode start, float64); each episode stores its seed, task, operator, start
    time, success and its cameras' ``info()`` (size, intrinsics).
    """
    report = SessionReport()
    backend = getattr(env, "backend", None)
    cameras = camera_info(backend.cameras) if backend is not None else {}
    max_attempts = max_attempts or 3 * episodes
    dt = 1.0 / fps
    t_session = time.monotonic()
    bar = tqdm(total=episodes, desc="episodes", disable=not progress, dynamic_ncols=True)
    quit_ = False
    while len(report.kept) < episodes and report.attempts < max_attempts and not quit_:
        ep_seed = seed + report.attempts
        report.attempts += 1
        env.reset(ep_seed)
        obs = env.observation()
        device.reset(ep_seed, obs, env.task_state() if hasattr(env, "task_state") else None)
        start_wall = time.time()
        success, decision, k = False, None, 0
        while True:
            if k:
                obs = env.observation()
            action = np.asarray(device.act(obs), dtype=np.float32)
            reward, done, info = env.step(action)
            success = success or bool(info.get("success", False))
            step = {"timestamp": np.float64(k * dt), **obs, "action": action, "reward": np.float32(reward)}
            writer.add_step(step)  # the env's own timestamp wins when it has one
            k += 1
            decision = device.poll()
            if decision in (KEEP, DISCARD, QUIT) or done:
                break
        if decision == QUIT:
            quit_ = True
            decision = DISCARD
        if decision is None:
            decision = KEEP if (keep == "all" or success) else DISCARD
        if decision == KEEP:
            writer.commit(seed=ep_seed, task=task, operator=operator, start_time=start_wall, success=success, steps=k,
                          **({"cameras": cameras} if cameras else {}))
            report.kept.append(len(report.kept))
            report.steps += k
            bar.update(1)
        else:
            writer.discard()
            report.discarded += 1
        bar.set_postfix(kept=len(report.kept), discarded=report.discarded, backlog=writer.backlog)
    bar.close()
    report.kept = writer.flush()
    report.seconds = time.monotonic() - t_session
    return report
