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
        make = lambda mask: SequenceSampler(  # noqa: E731
            self.arrays, self.episode_ends, horizon, steps, pad_before, pad_after, mask
        )
        return make(train), (make(val) if val.any() else None)


def load_task_data(
    store: EpisodeStore | str,
    obs_spec: Mapping[str, Mapping],
    action_spec: Mapping[str, Any],
    max_episodes: int | None = None,
    skip_damaged: bool = False,
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
    for source in sorted({s["source"] for s in specs.values()}):
        users = {name: spec for name, spec in specs.items() if spec["source"] == source}
        for _, block in scan(store, source, problems, n_rows=n):  # block by block: images become uint8 at once
            if block.dtype.kind == "f":
                block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)  # a non-finite value is reported (problems) and its episode dropped
            for name, spec in users.items():
                parts[name].append(select(block, spec, batch_dims=1))
    arrays = {name: np.concatenate(p) for name, p in parts.items()}
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
        arrays = {k: v[rows] for k, v in arrays.items()}
        ends = np.cumsum(lengths[keep])
    stats = {}
    for name, spec in specs.items():
        if spec.get("type", "low_dim") == "low_dim":
            try:
                stats[name] = compute_stats(arrays[name])
            except ValueError as e:
                raise ValueError(f"{store.path}: data/{spec['source']} ({name}): {e}") from e
    return TaskData(arrays, np.asarray(ends, dtype=np.int64).copy(), shape_meta(arrays, obs_spec), stats, damaged, problems)
