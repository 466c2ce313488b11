"""robomimic / robosuite HDF5 datasets <-> episode stores.

The robomimic layout (robomimic docs, "Dataset Structure"; written by robosuite's collection and
robomimic's ``dataset_states_to_obs.py``)::

    data                     attrs: total (steps), env_args (JSON string)
    data/demo_<i>            attrs: num_samples, model_file (optional)
      actions   (N, A)        rewards (N,)   dones (N,)   states (N, S) (simulator states, optional)
      obs/<key> (N, ...)      next_obs/<key> (N, ...) (optional)
    mask/<filter>            (M,) demo names: train, valid, ... (``filter_by_attribute``)

Store keys: ``obs/<key>`` -> ``<key>``, ``actions`` -> ``action``, ``rewards`` -> ``reward``,
``dones`` -> ``done``, ``states`` -> ``sim_state``; dtypes are kept. Each episode's metadata
records its demo name and the masks it belongs to; ``env_args`` and the demos' ``model_file`` go
to the store's attributes and episode metadata. ``next_obs`` is not imported (it is ``obs``
shifted by one step, except at the last step): the report says so.

robomimic itself is not a dependency: its PyPI release (0.3.0) builds ``egl_probe`` from source
and has no writer. This module follows its reader (``robomimic.utils.dataset.SequenceDataset``,
``robomimic.utils.file_utils``) and its train/valid split convention
(``robomimic.scripts.split_train_val``); tests open our exports in robomimic's SequenceDataset.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..store import EpisodeStore, EpisodeWriter
from .common import ConvertError, Report, image_to_uint8, interruptible

RENAME_IN = {"actions": "action", "rewards": "reward", "dones": "done", "states": "sim_state"}
RENAME_OUT = {v: k for k, v in RENAME_IN.items()}


def _demo_order(names) -> list[str]:
    def key(n: str):
        m = re.search(r"(\d+)$", n)
        return (int(m.group(1)) if m else float("inf"), n)
    return sorted(names, key=key)


_NOT_JSON = object()


def _attr(v):
    """An HDF5 attribute as a JSON value (bytes decoded, numpy scalars and arrays as Python), or _NOT_JSON."""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        v = v.tolist()
    try:
        json.dumps(v)
        return v
    except TypeError:
        return _NOT_JSON


def import_robomimic(src: Path, dst: Path, progress: bool = True, image_codec: str = "lossless") -> Report:
    """Write the demos of robomimic HDF5 ``src`` into a new store at ``dst`` (in demo order).

    Raises:
        ConvertError: ``src`` is not a robomimic HDF5 file (no ``data`` group of demos, a demo
            without ``actions``, arrays of different lengths within a demo, or demos whose keys
            or shapes differ).
    """
    import h5py

    report = Report()
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise ConvertError(f"{src}: not an HDF5 file ({e})") from e
    with f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise ConvertError(f"{src}: no 'data' group: not a robomimic dataset (expected data/demo_<i>/...)")
        demos = _demo_order([k for k in f["data"].keys() if isinstance(f["data"][k], h5py.Group)])
        if not demos:
            raise ConvertError(f"{src}: 'data' holds no demo")
        masks: dict[str, set[str]] = {}
        if "mask" in f:
            for name, ds in f["mask"].items():
                masks[name] = {x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(ds)}
        env_args = f["data"].attrs.get("env_args")
        if isinstance(env_args, bytes):
            env_args = env_args.decode()
        other = {k: _attr(v) for k, v in f["data"].attrs.items() if k not in ("env_args", "total", "protege_keys")}
        if env_args is None and "env" in other:  # robosuite's own demonstrations: env and env_info, as robomimic reads them
            info = other.get("env_info")
            try:
                kwargs = json.loads(info) if isinstance(info, str) and info else {}
            except ValueError:
                kwargs = {}
                report.notes.append("data.attrs['env_info'] is not JSON: kept as text, not as env_kwargs")
            env_args = json.dumps({"env_name": str(other["env"]), "type": 1, "env_kwargs": kwargs})
            report.notes.append(f"env_args made from robosuite's data.attrs env={other['env']!r} and env_info")
        fps = None
        try:
            env = json.loads(env_args) if env_args else {}
            ctrl = env.get("env_kwargs", {}).get("control_freq")
            fps = float(ctrl) if ctrl else None
        except (ValueError, AttributeError):
            env = {}
            report.dropped.append("data.attrs['env_args'] (not valid JSON)")
        if fps is None:
            report.notes.append("no control rate in env_args (env_kwargs.control_freq): the store's fps is unset")
        try:  # units and frames of an export of ours
            ours = json.loads(f["data"].attrs.get("protege_keys", "{}"))
        except ValueError:
            ours = {}
        key_meta = {RENAME_IN.get(k, k.removeprefix("obs/")): m for k, m in ours.items() if m}
        writer = EpisodeWriter(dst, fps=fps, image_codec=image_codec, key_meta=key_meta)
        if env_args:
            writer.root.attrs["robomimic_env_args"] = env if env else env_args
        kept = {k: v for k, v in other.items() if v is not _NOT_JSON}
        for k in sorted(set(other) - set(kept)):
            report.dropped.append(f"data.attrs[{k!r}] (not a JSON value)")
        if kept:
            writer.root.attrs["robomimic_attrs"] = kept
        skipped_next = False
        schema = None
        for name in interruptible(demos, desc="demos", disable=not progress, leave=False):
            g = f["data"][name]
            if "actions" not in g:
                raise ConvertError(f"{src}: data/{name} has no 'actions'")
            arrays: dict[str, np.ndarray] = {}
            for k in ("actions", "rewards", "dones", "states"):
                if k in g:
                    arrays[RENAME_IN[k]] = np.asarray(g[k])
            for k, ds in (g["obs"].items() if "obs" in g else []):
                if k in arrays:
                    raise ConvertError(f"{src}: data/{name}/obs/{k} clashes with a store key of the same name")
                arrays[k] = np.asarray(ds)
            skipped_next |= "next_obs" in g
            lengths = {k: len(v) for k, v in arrays.items()}
            if len(set(lengths.values())) != 1:
                raise ConvertError(f"{src}: data/{name}: arrays of different lengths {lengths}")
            this = {k: (v.shape[1:], v.dtype) for k, v in arrays.items()}
            if schema is None:
                schema = this
            elif this != schema:
                raise ConvertError(f"{src}: data/{name}: keys or shapes {this} differ from the first demo's {schema}")
            meta: dict[str, Any] = {"robomimic_demo": name, "masks": sorted(m for m, s in masks.items() if name in s)}
            if "model_file" in g.attrs:
                meta["model_file"] = str(g.attrs["model_file"])
            extra = {k: _attr(v) for k, v in g.attrs.items() if k not in ("model_file", "num_samples", "protege_meta")}
            for k in sorted(k for k, v in extra.items() if v is _NOT_JSON):
                report.dropped.append(f"data/{name}.attrs[{k!r}] (not a JSON value)")
            if extra := {k: v for k, v in extra.items() if v is not _NOT_JSON}:
                meta["robomimic_attrs"] = extra
            if "protege_meta" in g.attrs:
                try:
                    meta = {**json.loads(g.attrs["protege_meta"]), **meta}
                except ValueError:
                    report.dropped.append(f"data/{name}.attrs['protege_meta'] (not valid JSON)")
            writer.add_steps(arrays)
            writer.commit(**meta)
        writer.close()
    if skipped_next:
        report.dropped.append("next_obs/* (obs shifted by one step; robomimic rebuilds it on export)")
    report.notes.append(f"{len(demos)} demos, masks {sorted(masks) or 'none'} kept per episode (metadata 'masks')")
    return report


def export_robomimic(store: EpisodeStore, dst: Path, progress: bool = True, val_ratio: float = 0.1) -> Report:
    """Write ``store`` as a robomimic HDF5 file at ``dst``.

    Images become uint8 (H, W, 3) ``obs/<key>``. Episodes carrying ``masks`` metadata (imported
    from robomimic) keep them; otherwise ``mask/train`` and ``mask/valid`` split the episodes
    as robomimic's ``split_train_val`` does (``val_ratio``, at least one valid demo), with a
    fixed seed. ``next_obs`` is ``obs`` one step later (the last step repeats). Missing
    ``rewards`` are written as zeros and ``dones`` as 1 at each demo's last step; the report
    says so.
    """
    import h5py

    report = Report()
    meta = store.episode_meta
    keys = store.keys
    if "action" not in keys:
        raise ConvertError(f"{store.path}: no 'action' array: robomimic demos need actions")
    images = {k for k in keys if store.spec(k).is_image}
    obs_keys = [k for k in keys if k not in RENAME_OUT]
    if "reward" not in keys:
        report.added.append("rewards: the store has none; written as zeros")
    if "done" not in keys:
        report.added.append("dones: 1 at each demo's last step")
    report.added.append("next_obs/*: obs one step later, the last step repeated")
    for k in images:
        if store.spec(k).dtype != "uint8":
            report.notes.append(f"obs/{k}: {store.spec(k).dtype} pixels written as uint8")
    env_args = store.attrs.get("robomimic_env_args") or {"env_name": str(meta[0].get("task", "protege")) if meta else "protege",
                                                         "type": 1, "env_kwargs": {"control_freq": store.fps}}
    with h5py.File(dst, "w") as f:
        data = f.create_group("data")
        for k, v in (store.attrs.get("robomimic_attrs") or {}).items():
            data.attrs[k] = v if not isinstance(v, (dict, list)) else json.dumps(v)
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["protege_keys"] = json.dumps({RENAME_OUT.get(k, f"obs/{k}"): {f: v for f, v in m.items() if f in ("unit", "frame")}
                                                 for k, m in store.attrs.get("keys", {}).items()})
        names = []
        for e in interruptible(range(store.n_episodes), desc="demos", disable=not progress, leave=False):
            ep = store.episode(e)
            T = len(ep["action"])
            name = str(meta[e].get("robomimic_demo", f"demo_{e}"))
            names.append(name)
            g = data.create_group(name)
            g.attrs["num_samples"] = T
            if "model_file" in meta[e]:
                g.attrs["model_file"] = meta[e]["model_file"]
            for k, v in (meta[e].get("robomimic_attrs") or {}).items():  # the demo's own attributes, as they came
                g.attrs[k] = v if not isinstance(v, (dict, list)) else json.dumps(v)
            rest = {k: v for k, v in meta[e].items() if k not in ("model_file", "robomimic_demo", "masks", "robomimic_attrs")}
            if rest:
                g.attrs["protege_meta"] = json.dumps(rest)  # task, operator, success, ... back on import
            for k, out in RENAME_OUT.items():
                if k in ep:
                    g.create_dataset(out, data=ep[k])
            if "reward" not in ep:
                g.create_dataset("rewards", data=np.zeros(T, np.float64))
            if "done" not in ep:
                g.create_dataset("dones", data=(np.arange(T) == T - 1).astype(np.int64))
            for k in obs_keys:
                v = image_to_uint8(ep[k]) if k in images else ep[k]
                kw = {"chunks": (1, *v.shape[1:]), "compression": "gzip"} if k in images else {}
                g.create_dataset(f"obs/{k}", data=v, **kw)
                g.create_dataset(f"next_obs/{k}", data=np.concatenate([v[1:], v[-1:]]), **kw)
        data.attrs["total"] = int(store.n_steps)
        masks: dict[str, list[str]] = {}
        for name, m in zip(names, meta):
            for mask in m.get("masks", []):
                masks.setdefault(mask, []).append(name)
        if not masks:
            n_val = max(1, int(round(val_ratio * len(names)))) if len(names) > 1 else 0
            order = np.random.default_rng(0).permutation(len(names))
            valid = set(order[:n_val].tolist())
            masks = {"train": [n for i, n in enumerate(names) if i not in valid], "valid": [n for i, n in enumerate(names) if i in valid]}
            report.added.append(f"mask/train ({len(masks['train'])}) and mask/valid ({len(masks['valid'])}): a seeded {val_ratio:g} split")
        for mask, members in masks.items():
            f.create_dataset(f"mask/{mask}", data=np.array(members, dtype="S"))
    return report
