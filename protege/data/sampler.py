"""Sequence sampling over concatenated episodes (pure functions + a batch iterator).

A training sample is a window of ``horizon`` consecutive steps from one episode. Windows may start
up to ``pad_before`` steps before the episode and end up to ``pad_after`` steps after it; the
missing steps are filled by repeating the episode's first / last step (edge padding, as in
Diffusion Policy's ``SequenceSampler``; never zeros) and flagged False in the padding mask.
Source: Chi et al., "Diffusion Policy", RSS 2023, and its reference ``sampler.py``.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np


def episode_bounds(episode_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int64 arrays from exclusive ``episode_ends`` (E,)."""
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return starts, ends


def sequence_windows(
    episode_ends: np.ndarray,
    horizon: int,
    pad_before: int = 0,
    pad_after: int = 0,
    episodes: np.ndarray | None = None,
) -> np.ndarray:
    """Every window of the selected episodes.

    Args:
        episode_ends: (E,) int64 exclusive end indices.
        horizon: steps per window, >= 1.
        pad_before: how many steps a window may start before its episode (usually n_obs_steps - 1).
        pad_after: how many steps a window may run past its episode (usually n_action_steps - 1).
        episodes: (E,) bool mask or int indices of the episodes to use; all when None.

    Returns:
        (M, 3) int64 rows ``(window_start, episode_start, episode_end)`` in global step indices;
        ``window_start`` may be below ``episode_start``. Every selected non-empty episode yields at
        least one window, however short it is (short episodes are padded, never dropped).

    Raises:
        ValueError: horizon < 1 or negative padding.
    """
    if horizon < 1 or pad_before < 0 or pad_after < 0:
        raise ValueError(f"need horizon >= 1 and padding >= 0, got {horizon=}, {pad_before=}, {pad_after=}")
    starts, ends = episode_bounds(episode_ends)
    ids = np.arange(len(ends)) if episodes is None else np.arange(len(ends))[np.asarray(episodes)]
    rows = []
    for i in ids:
        s, e = int(starts[i]), int(ends[i])
        if e <= s:
            continue
        first = s - pad_before
        last = max(first, e - horizon + pad_after)
        t = np.arange(first, last + 1, dtype=np.int64)
        rows.append(np.stack([t, np.full_like(t, s), np.full_like(t, e)], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)


def window_indices(windows: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Global row indices and padding mask of the first ``length`` steps of each window.

    Args:
        windows: (B, 3) rows from :func:`sequence_windows`.
        length: steps to take from each window's start.

    Returns:
        ``(index, mask)``, both (B, length): ``index`` int64 rows to gather, clipped into the
        window's episode (edge padding); ``mask`` bool, True where the step is real data.
    """
    t = windows[:, :1] + np.arange(length, dtype=np.int64)[None]
    lo, hi = windows[:, 1:2], windows[:, 2:3]
    return np.clip(t, lo, hi - 1), (t >= lo) & (t < hi)


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split by episode.

    Returns (train_mask, val_mask), (E,) bool, disjoint. With ``val_ratio > 0`` and at least two
    episodes, validation gets at least one episode and training keeps at least one.

    Raises:
        ValueError: val_ratio outside [0, 1).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    n_val = 0
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    val = np.zeros(n_episodes, dtype=bool)
    val[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return ~val, val


class SequenceSampler:
    """Windows over in-memory arrays, gathered a batch at a time.

    Args:
        arrays: {key: (N, ...) array}, all episodes concatenated.
        episode_ends: (E,) exclusive end indices.
        horizon: window length.
        key_steps: {key: steps to return from each window's start}; keys not named get ``horizon``
            (observation keys usually get n_obs_steps, the action the full horizon).
        pad_before, pad_after, episodes: as in :func:`sequence_windows`.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        episode_ends: np.ndarray,
        horizon: int,
        key_steps: Mapping[str, int] | None = None,
        pad_before: int = 0,
        pad_after: int = 0,
        episodes: np.ndarray | None = None,
    ):
        self.arrays = dict(arrays)
        self.horizon = horizon
        self.key_steps = {k: (key_steps or {}).get(k, horizon) for k in self.arrays}
        self.windows = sequence_windows(episode_ends, horizon, pad_before, pad_after, episodes)
        self.weights: np.ndarray | None = None  # per-window sampling probabilities (None: each window once an epoch)
        self.learnable: np.ndarray | None = None  # (N,) bool rows whose action may be learned (None: all)
        self.first_step = 0  # the window step whose run of learnable rows the loss learns

    def restrict(self, keep: np.ndarray, weights: np.ndarray | None = None, learnable: np.ndarray | None = None,
                 first_step: int = 0) -> None:
        """Keep only the windows ``keep`` ((M,) bool); with ``weights`` ((M,) >= 0, for every window
        before the restriction), an epoch draws len(self) windows with replacement in proportion to
        them instead of visiting each once. With ``learnable`` ((N,) bool, one per row), batches
        carry ``"learn"`` (see :meth:`sample`) around step ``first_step`` of each window.

        Raises:
            ValueError: no window left, or weights or learnable of another length, or weights all zero.
        """
        if learnable is not None:
            learnable = np.asarray(learnable, bool)
            if learnable.shape != (len(next(iter(self.arrays.values()))),):
                raise ValueError("learnable must be one bool per row")
            self.learnable, self.first_step = learnable, int(first_step)
        keep = np.asarray(keep, bool)
        if keep.shape != (len(self.windows),):
            raise ValueError(f"keep must be ({len(self.windows)},) bool, got {keep.shape}")
        if weights is not None:
            weights = np.asarray(weights, float)
            if weights.shape != keep.shape or (weights < 0).any():
                raise ValueError("weights must be one non-negative number per window")
            weights = weights[keep]
            if not weights.sum() > 0:
                raise ValueError("every kept window has weight 0")
            self.weights = weights / weights.sum()
        self.windows = self.windows[keep]
        if not len(self.windows):
            raise ValueError("no training window is left")

    def __len__(self) -> int:
        return len(self.windows)

    def sample(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Batch of windows ``ids``: {key: (B, steps, ...)} plus ``"mask"`` (B, horizon) bool, and
        with :attr:`learnable` rows ``"learn"`` (B, horizon) bool: the unbroken run of learnable
        rows through step :attr:`first_step` (padded steps count as the row they repeat), so that a
        window starting in an operator's correction learns the correction up to the hand-back and
        nothing after it. The ``action`` steps outside that run repeat its first or last action, as
        steps past an episode's end repeat its last (edge padding), so no policy-driven action
        reaches the loss, not even as a diffusion model's noised input."""
        windows = self.windows[np.asarray(ids)]
        index, mask = window_indices(windows, self.horizon)
        action_index = index
        learn = None
        if self.learnable is not None:
            ok, f = self.learnable[index], self.first_step
            after = np.cumprod(ok[:, f:], axis=1, dtype=bool)
            before = np.cumprod(ok[:, f::-1], axis=1, dtype=bool)[:, :0:-1]
            learn = np.concatenate([before, after], axis=1)
            lo, hi = learn.argmax(1), self.horizon - 1 - learn[:, ::-1].argmax(1)  # the run's first and last step
            cols = np.clip(np.arange(self.horizon)[None], lo[:, None], hi[:, None])
            action_index = np.take_along_axis(index, cols, axis=1)
        out = {k: a[(action_index if k == "action" else index)[:, : self.key_steps[k]]] for k, a in self.arrays.items()}
        out["mask"] = mask
        if learn is not None:
            out["learn"] = learn
        return out

    def batch_ids(self, batch_size: int, rng: np.random.Generator, drop_last: bool = True) -> Iterator[np.ndarray]:
        """One epoch's window ids per batch, shuffled with ``rng`` (see :meth:`batches`)."""
        order = rng.permutation(len(self)) if self.weights is None else rng.choice(len(self), len(self), p=self.weights)
        # with fewer windows than one batch, drop_last would yield nothing at all: keep the rest
        stop = len(order) - batch_size + 1 if drop_last and len(order) >= batch_size else len(order)
        for i in range(0, max(stop, 0), batch_size):
            yield order[i : i + batch_size]

    def batches(self, batch_size: int, rng: np.random.Generator, drop_last: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """One epoch of shuffled batches drawn with ``rng`` (a short final batch is dropped
        when ``drop_last`` and at least one full batch exists)."""
        for ids in self.batch_ids(batch_size, rng, drop_last):
            yield self.sample(ids)
