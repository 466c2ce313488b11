"""Action schedulers in time: which action of which predicted chunk is the target for each instant.

Both take a chunk (Ta, Da) with the time ``t_obs`` of the observation it was predicted from, and
stamp its action i with ``t_obs + (i + offset) * dt``: the time the arm is to *reach* that target
(``offset = 1`` for data recorded as protege records it: the action stored with step k is the
target for the end of step k). :meth:`ActionScheduler.action_at` gives the action stamped at a
time; an action of a chunk whose time has passed when the chunk arrives is dropped and counted,
never applied late.

Receding horizon (Chi et al., "Diffusion Policy", RSS 2023, section 3.1, and its real-robot
deployment, which drops the actions of a chunk that are already late when inference returns):
execute ``n_action_steps`` actions of the newest chunk open loop, from its first action still on
time (in lockstep, where nothing is late, its first ``n_action_steps``). A newer chunk replaces the
older one from its first action on time; the older chunk's actions before it that were not yet
asked for stay, so a control loop that woke late still gets a target for its cycle. Over
``blend_steps`` steps the target moves linearly from the older chunk's prediction to the newer
one's, so a chunk boundary does not jump.

Temporal ensembling (Zhao et al., "ACT", RSS 2023, section 4): every chunk's prediction for an
instant is averaged, weights exp(-k * i) with i = 0 for the oldest prediction.

Pure: no clock, no threads; the caller passes the times.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import numpy as np

_TOL = 1e-6


def _row(stamps: np.ndarray, t: float, dt: float) -> int | None:
    """Index of the stamp within dt / 2 of ``t``, or None."""
    j = np.flatnonzero(np.abs(stamps - t) < 0.5 * dt)
    return int(j[0]) if len(j) else None


class ActionScheduler(abc.ABC):
    """Chunks in, one timestamped action out.

    Args:
        dt: control period, s.
        offset: action i of a chunk is stamped ``t_obs + (i + offset) * dt``.

    Attributes:
        dropped: actions dropped because their time had passed (counted since :meth:`reset`).

    Raises:
        ValueError: ``dt`` <= 0.
    """

    name = ""  # the scheduler's name in reports (its file in configs/scheduler/)
    _counts_skips = True  # an action the caller stepped over (never asked for) was dropped

    def __init__(self, dt: float, offset: float = 1.0):
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.dt, self.offset = float(dt), float(offset)
        self.reset()

    def reset(self) -> None:
        """Forget every chunk and the counts (a new episode)."""
        self.dropped = 0
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (stamps (n,), actions (n, Da)), oldest first
        self._asked = -np.inf  # the stamp last asked for by action_at

    def stamps(self, n: int, t_obs: float) -> np.ndarray:
        """(n,) float64 s: the times of a chunk's first ``n`` actions."""
        return t_obs + (np.arange(n) + self.offset) * self.dt

    def _check(self, chunk) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or len(chunk) == 0:
            raise ValueError(f"need a (Ta, Da) chunk, got shape {chunk.shape}")
        if self._chunks and chunk.shape[1] != self._chunks[-1][1].shape[1]:
            raise ValueError(f"chunk has Da={chunk.shape[1]}, earlier chunks {self._chunks[-1][1].shape[1]}")
        return chunk

    def add_chunk(self, chunk, t_obs: float, now: float) -> int:
        """Schedule a chunk (Ta, Da) predicted from the observation at ``t_obs`` s. Actions stamped
        at or before ``now`` s, or at or before the last time :meth:`action_at` was asked for,
        are late: they are dropped.

        Returns:
            The number of actions dropped as late.

        Raises:
            ValueError: not a (Ta, Da) chunk with Ta >= 1, or another Da than earlier chunks.
        """
        chunk = self._check(chunk)
        stamps = self.stamps(len(chunk), t_obs)
        n_late = int((stamps <= max(now, self._asked) + _TOL).sum())  # stamps increase: the late ones lead
        keep = self._usable(len(chunk), n_late)
        self.dropped += n_late
        self._insert(stamps[n_late:keep], chunk[n_late:keep])
        return n_late

    def _usable(self, ta: int, n_late: int) -> int:
        """End (exclusive) of the rows of a chunk to schedule, given its ``n_late`` late ones."""
        return ta

    @abc.abstractmethod
    def _insert(self, stamps: np.ndarray, actions: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _value(self, t: float) -> np.ndarray | None: ...

    def action_at(self, t: float) -> np.ndarray | None:
        """The action (Da,) float64 stamped ``t`` s (within dt / 2), or None when none is
        scheduled for it (the queue ran dry). Actions stamped before ``t`` that were never asked
        for are dropped and counted; times must not decrease between calls."""
        if self._counts_skips:
            for stamps, _ in self._chunks:
                self.dropped += int(((stamps > self._asked + 0.5 * self.dt) & (stamps < t - 0.5 * self.dt)).sum())
        self._asked = max(self._asked, float(t))
        return self._value(t)

    def peek(self, t: float) -> np.ndarray | None:
        """The action :meth:`action_at` would give for ``t``, without counting or moving on."""
        return self._value(t)

    def last_stamp(self) -> float:
        """The time s of the last scheduled action (-inf when none)."""
        return max((float(s[-1]) for s, _ in self._chunks if len(s)), default=-np.inf)

    def needs_chunk(self, t: float, lead_s: float = 0.0) -> bool:
        """Whether a new chunk should be requested at ``t`` s so that, arriving ``lead_s`` s
        later, it continues the actions scheduled now without a gap."""
        return self.last_stamp() - t < lead_s + self.dt - _TOL


class RecedingHorizon(ActionScheduler):
    """Executes ``n_action_steps`` actions of the newest chunk from its first on-time one
    (Diffusion Policy, section 3.1).

    Args:
        n_action_steps: actions executed per chunk (the paper's Ta, 8).
        dt, offset: see :class:`ActionScheduler`.
        blend_steps: steps over which a newer chunk takes over from the older one (0: at once).

    Raises:
        ValueError: n_action_steps < 1, blend_steps < 0, or dt <= 0.
    """

    name = "receding_horizon"

    def __init__(self, n_action_steps: int, dt: float = 0.1, offset: float = 1.0, blend_steps: int = 0):
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        if blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0, got {blend_steps}")
        self.n_action_steps, self.blend_steps = int(n_action_steps), int(blend_steps)
        super().__init__(dt, offset)

    def _usable(self, ta: int, n_late: int) -> int:
        # n_action_steps actions are executed: the first on time and those after it (the paper's
        # real-robot runs instead lose the late ones from the n_action_steps)
        return min(ta, n_late + self.n_action_steps)

    def _insert(self, stamps, actions) -> None:
        if len(stamps) == 0:
            return
        if self._chunks:
            old_s, old_a = self._chunks[-1]
            if self.blend_steps:
                actions = actions.copy()
                for i in range(min(self.blend_steps, len(stamps))):
                    if (j := _row(old_s, stamps[i], self.dt)) is not None:
                        w = (i + 1) / (self.blend_steps + 1)  # weight of the new chunk
                        actions[i] = (1 - w) * old_a[j] + w * actions[i]
            # the newer chunk takes over from its first action on time (module docstring)
            before = (old_s > self._asked + 0.5 * self.dt) & (old_s < stamps[0] - 0.5 * self.dt)
            stamps, actions = np.concatenate([old_s[before], stamps]), np.concatenate([old_a[before], actions])
        self._chunks = [(stamps, actions)]

    def _value(self, t: float) -> np.ndarray | None:
        if not self._chunks:
            return None
        stamps, actions = self._chunks[0]
        j = _row(stamps, t, self.dt)
        return None if j is None else actions[j].copy()


class TemporalEnsembling(ActionScheduler):
    """Averages every chunk's prediction for the current instant (ACT, section 4).

    The action for time t is sum_i w_i a_i / sum_i w_i over the chunks that predict t, oldest
    first, w_i = exp(-k i). The policy is queried every step; a skipped query just leaves fewer
    predictions to average.

    Args:
        k: the weights' decay (ACT: 0.01).
        dt, offset: see :class:`ActionScheduler`.

    Raises:
        ValueError: k < 0, or dt <= 0.
    """

    name = "temporal_ensembling"
    _counts_skips = False  # overlapping predictions are averaged, not skipped

    def __init__(self, k: float = 0.01, dt: float = 0.1, offset: float = 1.0):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = float(k)
        super().__init__(dt, offset)

    def _insert(self, stamps, actions) -> None:
        if len(stamps):
            self._chunks.append((stamps, actions))

    def _value(self, t: float) -> np.ndarray | None:
        # chunks whose last prediction has passed are forgotten
        self._chunks = [(s, a) for s, a in self._chunks if s[-1] >= t - 0.5 * self.dt]
        preds = []
        for stamps, actions in self._chunks:
            if (j := _row(stamps, t, self.dt)) is not None:
                preds.append(actions[j])
        if not preds:
            return None
        w = np.exp(-self.k * np.arange(len(preds)))
        return (w[:, None] * np.stack(preds)).sum(0) / w.sum()

    def needs_chunk(self, t: float, lead_s: float = 0.0) -> bool:
        return True


def build_scheduler(cfg: Mapping[str, Any], n_action_steps: int, dt: float = 0.1, offset: float = 1.0) -> ActionScheduler:
    """A fresh scheduler from an entry of the ``scheduler`` config group (``configs/scheduler/``:
    a ``_target_`` class and its parameters), for a policy whose own ``n_action_steps`` fills an
    ``n_action_steps: null`` of the config.

    Args:
        cfg: the group's entry, e.g. ``{"_target_": "protege.control.schedulers.RecedingHorizon",
            "n_action_steps": None, "blend_steps": 2}``.
        n_action_steps: the policy's.
        dt: control period, s; offset: see :class:`ActionScheduler`.

    Raises:
        ValueError: a bad parameter, or a target that is not an :class:`ActionScheduler`.
    """
    import hydra
    from hydra.errors import InstantiationException
    from omegaconf import DictConfig, OmegaConf

    params = dict(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)
    params.pop("_partial_", None)
    if "n_action_steps" in params and params["n_action_steps"] is None:
        params["n_action_steps"] = n_action_steps
    try:
        sched = hydra.utils.instantiate(params, dt=dt, offset=offset)
    except InstantiationException as e:
        raise ValueError(f"scheduler {params.get('_target_')}: {e.__cause__ or e}") from e
    if not isinstance(sched, ActionScheduler):
        raise ValueError(f"scheduler {params.get('_target_')!r} is not an action scheduler")
    return sched
