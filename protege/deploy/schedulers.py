"""Action schedulers: which action of which predicted chunk runs at each control step.

Receding horizon (Chi et al., "Diffusion Policy", RSS 2023, section 3.1): predict a chunk, execute
its first ``n_action_steps`` actions open loop, then predict again from fresh observations.
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
