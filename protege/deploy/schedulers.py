"""Action schedulers: which action of which predicted chunk runs at each control step.

Receding horizon (Chi et al., "Diffusion Policy", RSS 2023, section 3.1): predict a chunk, execute
its first ``n_action_steps`` actions open loop, then predict again from fresh observations.

Temporal ensembling (Zhao et al., "ACT", RSS 2023, section 4): predict a chunk at every step and
execute a weighted average of every chunk's prediction for the current step, weights
exp(-k * i) with i = 0 for the oldest prediction.

Both take chunks (Ta, Da) whose row 0 is the action for the step at which the chunk was asked for;
they are the two schedulers of one control loop and work with any policy.
"""

from __future__ import annotations

import numpy as np


class RecedingHorizon:
    """Executes the first ``n_action_steps`` of each chunk.

    Usage per control step: if :meth:`needs_chunk`, run the policy and :meth:`add_chunk` its
    (Ta, Da) output; then :meth:`next_action` gives the (Da,) action for this step.

    Raises:
        ValueError: n_action_steps < 1, or a chunk shorter than n_action_steps.
    """

    def __init__(self, n_action_steps: int):
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        self.n_action_steps = n_action_steps
        self.reset()

    def reset(self) -> None:
        self._queue: list[np.ndarray] = []

    def needs_chunk(self) -> bool:
        return not self._queue

    def add_chunk(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or len(chunk) < self.n_action_steps:
            raise ValueError(f"need a (Ta >= {self.n_action_steps}, Da) chunk, got shape {chunk.shape}")
        self._queue = list(chunk[: self.n_action_steps])

    def next_action(self) -> np.ndarray:
        if not self._queue:
            raise RuntimeError("no action scheduled: add a chunk first")
        return self._queue.pop(0)


class TemporalEnsembling:
    """Averages every chunk's prediction for the current step (ACT, section 4).

    A chunk added at step t predicts steps t, t+1, ...; the action for step t is
    sum_i w_i a_i / sum_i w_i over the chunks that cover t, ordered oldest first, w_i = exp(-k i).
    The policy is queried every step; a skipped query just leaves fewer chunks to average.

    Raises:
        ValueError: k < 0, or chunks of different action dimensions.
        RuntimeError: no chunk covers the current step.
    """

    def __init__(self, k: float = 0.01):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, (Ta, Da))

    def needs_chunk(self) -> bool:
        return True

    def add_chunk(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or (self._chunks and chunk.shape[1] != self._chunks[0][1].shape[1]):
            raise ValueError(f"need (Ta, Da) chunks of one Da, got shape {chunk.shape}")
        self._chunks.append((self.t, chunk))

    def next_action(self) -> np.ndarray:
        self._chunks = [(s, c) for s, c in self._chunks if self.t - s < len(c)]  # drop expired chunks
        if not self._chunks:
            raise RuntimeError(f"no chunk covers step {self.t}: add a chunk first")
        preds = np.stack([c[self.t - s] for s, c in self._chunks])  # oldest first
        w = np.exp(-self.k * np.arange(len(preds)))
        self.t += 1
        return (w[:, None] * preds).sum(0) / w.sum()


SCHEDULERS = {
    "receding_horizon": lambda n_action_steps, k: RecedingHorizon(n_action_steps),
    "temporal_ensembling": lambda n_action_steps, k: TemporalEnsembling(k),
}


def make_scheduler(name: str, n_action_steps: int, k: float = 0.01) -> RecedingHorizon | TemporalEnsembling:
    """A fresh scheduler by name: ``receding_horizon`` (uses n_action_steps) or ``temporal_ensembling`` (uses k)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown action scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](n_action_steps, k)
