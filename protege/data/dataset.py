"""From store keys to policy keys: the task's observation spec, applied alike to a store (training)
and to a live observation (evaluation, deployment), and the in-memory training dataset.

An observation spec maps each policy key to a store key::

    {"agent_pos": {"source": "state", "slice": [0, 2], "type": "low_dim"},
     "image":     {"source": "img", "type": "rgb"}}

``low_dim`` keys become float32 (..., D) (trailing axes flattened); ``rgb`` keys become uint8
(..., H, W, 3). The action spec is ``{"source": "action"}`` (optionally with a ``slice``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .sampler import SequenceSampler, split_episodes
from .stats import compute_stats
from .store import EpisodeStore, StoreError
from .validate import Problem, damaged_episodes, scan

OBS_TYPES = ("low_dim", "rgb")


def _check_spec(name: str, spec: Mapping[str, Any]) -> None:
    if "source" not in spec:
        raise ValueError(f"observation spec {name!r} needs a 'source' store key, got {dict(spec)}")
    if spec.get("type", "low_dim") not in OBS_TYPES:
        raise ValueError(f"observation spec {name!r}: type must be one of {OBS_TYPES}, got {spec.get('type')!r}")


def select(value: np.ndarray, spec: Mapping[str, Any], batch_dims: int) -> np.ndarray:
    """Apply one key's spec to a store array (``batch_dims=1``) or a single step (``batch_dims=0``).

    Raises:
        ValueError: an rgb value that is not (..., H, W, 3), or float pixels outside [0, 255].
    """
    value = np.asarray(value)
    if spec.get("type", "low_dim") == "rgb":
        if value.ndim != batch_dims + 3 or value.shape[-1] != 3:
            raise ValueError(f"rgb key from {spec['source']!r} must be (H, W, 3) per step, got {value.shape[batch_dims:]}")
        if value.dtype != np.uint8:
            if value.size and (np.nanmin(value) < 0 or np.nanmax(value) > 255 or np.isnan(value).any()):
                raise ValueError(f"rgb key from {spec['source']!r}: float pixels must lie in [0, 255]")
            value = np.round(value).astype(np.uint8)
        return value
    if "slice" in spec:
        a, b = spec["slice"]
        value = value[..., a:b]
    return value.reshape(*value.shape[:batch_dims], -1).astype(np.float32)


def obs_from_step(raw: Mapping[str, np.ndarray], obs_spec: Mapping[str, Mapping]) -> dict[str, np.ndarray]:
    """One live step in the store's schema ({store key: per-step array}) -> {policy key: array}."""
    missing = {s["source"] for s in obs_spec.values()} - set(raw)
    if missing:
        raise KeyError(f"observation lacks store keys {sorted(missing)}; it has {sorted(raw)}")
    return {k: select(raw[s["source"]], s, batch_dims=0) for k, s in obs_spec.items()}


def shape_meta(arrays: Mapping[str, np.ndarray], obs_spec: Mapping[str, Mapping]) -> dict[str, Any]:
    """The data schema a policy is built for: {"obs": {key: {"shape", "type"}}, "action": {"shape"}}."""
    return {
        "obs": {k: {"shape": list(arrays[k].shape[1:]), "type": s.get("type", "low_dim")} for k, s in obs_spec.items()},
        "action": {"shape": list(arrays["action"].shape[1:])},
    }


@dataclass
class TaskData:
    """A task's arrays in memory (policy keys + ``action``), episode ends, schema and statistics."""

    arrays: dict[str, np.ndarray]
    episode_ends: np.ndarray
    shape_meta: dict[str, Any]
    stats: dict[str, dict[str, np.ndarray]]
    skipped: list[int] = field(default_factory=list)  # damaged episodes left out (skip_damaged)
    problems: list[Problem] = field(default_factory=list)  # what damaged them
    # several stores (load_training_data): per row, its store and whether its action may be learned
    # (None: every row's; see window_choice); per store, its sampling weight
    row_store: np.ndarray | None = None
    row_learnable: np.ndarray | None = None
    store_weights: list[float] | None = None

    @property
    def image_keys(self) -> list[str]:
        return [k for k, m in self.shape_meta["obs"].items() if m["type"] == "rgb"]

    def samplers(
        self, horizon: int, n_obs_steps: int, pad_before: int, pad_after: int, val_ratio: float, seed: int
    ) -> tuple[SequenceSampler, SequenceSampler | None]:
        """Train and validation samplers split by episode; observation keys return n_obs_steps
        steps, the action ``horizon`` steps (padding: see :func:`~protege.data.sampler.sequence_windows`)."""
        train, val = split_episodes(len(self.episode_ends), val_ratio, seed)
        steps = {k: n_obs_steps for k in self.shape_meta["obs"]}

        def make(mask):
            sampler = SequenceSampler(self.arrays, self.episode_ends, horizon, steps, pad_before, pad_after, mask)
            if self.row_store is not None:
                keep, weights, learnable = self.window_choice(sampler.windows, horizon, n_obs_steps)
                sampler.restrict(keep, weights, learnable, first_step=n_obs_steps - 1)
            return sampler

        return make(train), (make(val) if val.any() else None)

    def window_choice(self, windows: np.ndarray, horizon: int, n_obs_steps: int
                      ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Which windows to learn from, their sampling weights, and which rows' actions may be
        learned (:attr:`row_learnable`, see :func:`load_training_data`), for data of several stores.

        A window is kept when the row of its last observation
        (``start + n_obs_steps - 1``, where the predicted chunk starts) is learnable, and the loss
        learns the unbroken run of learnable rows through it (:meth:`SequenceSampler.sample`'s
        ``"learn"``): a window that straddles a hand-over learns the operator's actions up to the
        hand-back and none of the policy's after it; one that starts under the policy is left out.
        Weights: each store's share of the draws is its weight (``data.weights``), spread evenly
        over its kept windows.

        Returns:
            ``(keep (M,) bool, weights (M,) float or None, learnable (N,) bool or None)``.
        """
        first = np.clip(windows[:, 0] + n_obs_steps - 1, windows[:, 1], windows[:, 2] - 1)
        store = self.row_store[first]
        learnable = self.row_learnable
        keep = np.ones(len(windows), bool) if learnable is None else learnable[first]
        weights = None
        if self.store_weights is not None:
            counts = np.bincount(store[keep], minlength=len(self.store_weights)).astype(float)
            w = np.asarray(self.store_weights, float)
            weights = np.where(counts[store] > 0, w[store] / np.maximum(counts[store], 1), 0.0)
        return keep, weights, learnable


def load_task_data(
    store: EpisodeStore | str,
    obs_spec: Mapping[str, Mapping],
    action_spec: Mapping[str, Any],
    max_episodes: int | None = None,
    skip_damaged: bool = False,
    lazy_images: bool = False,
    cache_mb: float = 512.0,
) -> TaskData:
    """Read a task's keys from a store into memory, checking every chunk as it is read
    (:func:`protege.data.validate.scan`), and compute their statistics.

    Args:
        store: an :class:`EpisodeStore` or its path.
        obs_spec: {policy key: spec}, see the module docstring.
        action_spec: {"source": store key, optional "slice"}.
        max_episodes: only the first N episodes (for small tests and quick runs).
        skip_damaged: leave out the episodes with a missing or undecodable chunk or a non-finite
            value in the task's keys (and say which) instead of refusing the store.
        lazy_images: keep the images in the store, read as windows are drawn
            (:class:`~protege.data.lazy.LazyArray`, a cache of ``cache_mb`` decoded chunks); every
            chunk is still checked once here.

    Raises:
        StoreError: a source key is missing from the store, the store holds no episode, or the
            task's keys are damaged (each problem named) and ``skip_damaged`` is off.
        ValueError: a bad spec.
    """
    store = store if isinstance(store, EpisodeStore) else EpisodeStore(store, check_rows=False)
    for name, spec in obs_spec.items():
        _check_spec(name, spec)
    specs = {**obs_spec, "action": {**action_spec, "type": "low_dim"}}
    missing = sorted({s["source"] for s in specs.values()} - set(store.keys))
    if missing:
        raise StoreError(f"{store.path}: the task needs store keys {missing}; the store has {store.keys}")
    ends = store.episode_ends[:max_episodes] if max_episodes else store.episode_ends
    if len(ends) == 0:
        raise StoreError(f"{store.path}: the store holds no committed episode")
    n = int(ends[-1])
    problems: list[Problem] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    lazy: dict[str, Any] = {}
    for source in sorted({s["source"] for s in specs.values()}):
        users = {name: spec for name, spec in specs.items() if spec["source"] == source}
        eager = {name: spec for name, spec in users.items() if not (lazy_images and spec.get("type") == "rgb")}
        for _, block in scan(store, source, problems, n_rows=n):  # block by block: images become uint8 at once
            if block.dtype.kind == "f":
                block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)  # a non-finite value is reported (problems) and its episode dropped
            for name, spec in eager.items():
                parts[name].append(select(block, spec, batch_dims=1))
        for name in set(users) - set(eager):
            from .lazy import LazyArray

            lazy[name] = LazyArray([(store._array(source), users[name], np.arange(n))], cache_mb)
    arrays = {name: np.concatenate(p) for name, p in parts.items() if name not in lazy}
    arrays.update(lazy)
    damaged = damaged_episodes(problems)
    if damaged and not skip_damaged:
        shown = "; ".join(str(p) for p in problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise StoreError(f"{store.path}: {len(damaged)} damaged episode(s) in the task's keys, training refused ({shown}). "
                         f"`protege-data validate {store.path}` lists every problem, `protege-data repair {store.path}` "
                         f"drops them from the store, data.skip_damaged=true trains without them")
    if damaged:
        lengths = np.diff(np.concatenate([[0], ends]))
        starts = ends - lengths
        keep = [e for e in range(len(ends)) if e not in set(damaged)]
        if not keep:
            raise StoreError(f"{store.path}: every episode is damaged")
        rows = np.concatenate([np.arange(starts[e], ends[e]) for e in keep])
        arrays = {k: v.take(rows) if hasattr(v, "segments") else v[rows] for k, v in arrays.items()}
        ends = np.cumsum(lengths[keep])
    stats = {}
    for name, spec in specs.items():
        if spec.get("type", "low_dim") == "low_dim":
            try:
                stats[name] = compute_stats(arrays[name])
            except ValueError as e:
                raise ValueError(f"{store.path}: data/{spec['source']} ({name}): {e}") from e
    return TaskData(arrays, np.asarray(ends, dtype=np.int64).copy(), shape_meta(arrays, obs_spec), stats, damaged, problems)


ROLLOUT_CHOICES = ("human", "human_and_success", "all")


def load_training_data(
    stores: list[str] | str,
    obs_spec: Mapping[str, Mapping],
    action_spec: Mapping[str, Any],
    max_episodes: int | None = None,
    skip_damaged: bool = False,
    weights: list[float] | None = None,
    rollouts: str = "human",
    lazy_images: bool = False,
    cache_mb: float = 512.0,
) -> TaskData:
    """One store, or several concatenated for training (images in memory, or read lazily: see
    :func:`load_task_data`): demonstrations and deployment rollouts
    (episodes with ``source: policy_rollout`` and a per-step ``intervention`` label), mixed with
    per-store ``weights``. What a rollout teaches is ``rollouts``: ``all`` its every step;
    ``human`` (HG-DAgger, Kelly et al. 2019) the steps the operator drove; ``human_and_success``
    those and every step of its successful episodes. Demonstrations' steps are always learned
    (:attr:`TaskData.row_learnable`; :meth:`TaskData.window_choice` for the windows).

    Raises:
        ValueError: weights not one positive number per store, an unknown ``rollouts`` choice, or
            stores with other observation shapes.
        StoreError: as :func:`load_task_data`, for any store.
    """
    paths = [stores] if isinstance(stores, (str, EpisodeStore)) else list(stores)
    if rollouts not in ROLLOUT_CHOICES:
        raise ValueError(f"data.rollouts must be one of {ROLLOUT_CHOICES}, got {rollouts!r}")
    if weights is not None and (len(weights) != len(paths) or any(not (float(w) > 0) for w in weights)):
        raise ValueError(f"data.weights must give one positive weight per store ({len(paths)}), got {list(weights)}")
    if len(paths) == 1 and weights is None:
        data = load_task_data(paths[0], obs_spec, action_spec, max_episodes, skip_damaged, lazy_images, cache_mb)
        store = paths[0] if isinstance(paths[0], EpisodeStore) else EpisodeStore(paths[0], check_rows=False)
        if "intervention" not in store.keys:
            return data
        parts = [(data, store)]
    else:
        parts = []
        for p in paths:
            store = p if isinstance(p, EpisodeStore) else EpisodeStore(p, check_rows=False)
            parts.append((load_task_data(store, obs_spec, action_spec, max_episodes, skip_damaged, lazy_images, cache_mb), store))
    first = parts[0][0]
    for d, st in parts[1:]:
        if d.shape_meta != first.shape_meta:
            raise ValueError(f"{st.path}: its observations or actions {d.shape_meta} differ from {parts[0][1].path}'s "
                             f"{first.shape_meta}; train on stores of one task")
    def concat(vs):
        if hasattr(vs[0], "segments"):
            from .lazy import LazyArray

            return LazyArray.concat(vs)
        return np.concatenate(vs)

    arrays = {k: concat([d.arrays[k] for d, _ in parts]) for k in first.arrays}
    ends, offset = [], 0
    row_store, row_learnable = [], []
    for i, (d, st) in enumerate(parts):
        ends.append(d.episode_ends + offset)
        n = int(d.episode_ends[-1])
        offset += n
        kept = [e for e in range(len(st.episode_ends[:max_episodes] if max_episodes else st.episode_ends)) if e not in set(d.skipped)]
        meta = st.episode_meta
        lengths = np.diff(np.concatenate([[0], d.episode_ends]))
        rollout = np.repeat([meta[e].get("source") == "policy_rollout" for e in kept], lengths)
        success = np.repeat([bool(meta[e].get("success")) for e in kept], lengths)
        if "intervention" in st.keys:
            starts = st.episode_starts
            human = np.concatenate([np.asarray(st._array("intervention")[int(starts[e]):int(starts[e]) + int(ln)]).ravel() > 0
                                    for e, ln in zip(kept, lengths)])
        else:
            human = np.zeros(n, bool)
        row_store.append(np.full(n, i))
        row_learnable.append(~rollout | (rollouts == "all") | human | ((rollouts == "human_and_success") & success))
    learnable = np.concatenate(row_learnable)
    if learnable.all():  # demonstrations only, or nothing a policy drove is left out: no mask to carry
        learnable = None
    # the action's statistics are those of the actions learned (a policy's, left out of the loss, are left out here too)
    stats = {k: compute_stats(arrays[k] if k != "action" or learnable is None else arrays[k][learnable])
             for k in first.stats}
    return TaskData(arrays, np.concatenate(ends), first.shape_meta, stats,
                    [e for d, _ in parts for e in d.skipped], [p for d, _ in parts for p in d.problems],
                    np.concatenate(row_store), learnable, [float(w) for w in weights] if weights is not None else None)
