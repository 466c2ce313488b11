"""Self-contained checkpoints: everything needed to run or resume a policy, and no dataset.

A checkpoint is one ``torch.save`` file holding plain containers and tensors (it loads with
``weights_only=True``)::

    format_version   int, CHECKPOINT_FORMAT
    config           the full resolved hydra config of the run (dict)
    policy           {"target": class path, "kwargs": constructor arguments}
    shape_meta       the data schema the policy was trained on
    normalizer       {"stats": {key: {min, max, mean, std}}, "image_keys": [...]}
    state_dict       model weights (normalizer buffers included)
    ema_state_dict   the same with the EMA weights (None when EMA is off)
    train_state      step, epoch, wall-clock seconds, optimizer, lr scheduler, EMA and RNG states
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from hydra.utils import get_class

from .normalizer import Normalizer
from .base import Policy

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A file is not a protege checkpoint, or its format version is unknown."""


def build_policy(target: str, kwargs: Mapping[str, Any], shape_meta: Mapping[str, Any], normalizer: Normalizer) -> Policy:
    """Construct the policy class named by ``target`` (a hydra ``_target_`` path)."""
    cls = get_class(target)
    if not issubclass(cls, Policy):
        raise CheckpointError(f"{target} is not a protege Policy")
    return cls(shape_meta=shape_meta, normalizer=normalizer, **kwargs)


def save_checkpoint(path: str | Path, policy: Policy, target: str, kwargs: Mapping[str, Any], config: Mapping[str, Any],
                    ema_state_dict: Mapping[str, torch.Tensor] | None, train_state: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file, then rename): a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": CHECKPOINT_FORMAT,
        "config": dict(config),
        "policy": {"target": target, "kwargs": dict(kwargs)},
        "shape_meta": dict(policy.shape_meta),
        "normalizer": {"stats": policy.normalizer.stats(), "image_keys": policy.normalizer.image_keys},
        "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "ema_state_dict": None if ema_state_dict is None else {k: v.detach().cpu() for k, v in ema_state_dict.items()},
        "train_state": dict(train_state),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a protege checkpoint or an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    _check_archive(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        import re

        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        why = (f"it holds a Python object of class {unsupported.group(1)}, which a checkpoint never does "
               "(it holds tensors and plain containers only)" if unsupported
               else f"torch.load could not read it ({type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else ''})")
        raise CheckpointError(f"{path}: not a protege checkpoint: {why}") from e
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not a protege checkpoint")
    if ckpt["format_version"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format_version']}, this protege reads {CHECKPOINT_FORMAT}")
    return ckpt


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive holding ``<name>/data.pkl``; say plainly when a file is not one."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: not a protege checkpoint: the file is empty (an interrupted copy?)")
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not a protege checkpoint: not a file torch.save wrote (those are zip archives; "
                              f"this one starts with the bytes {head.hex(' ')})")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: not a protege checkpoint: a damaged zip archive ({e}; an interrupted copy?)") from e
    if not any(n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{path}: not a protege checkpoint: a zip archive, but not one torch.save wrote "
                              f"(no data.pkl among {names[:3]}{'...' if len(names) > 3 else ''})")


def load_policy(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> tuple[Policy, dict[str, Any]]:
    """Rebuild a policy from a checkpoint alone, in eval mode on ``device``.

    Returns ``(policy, checkpoint)``. With ``use_ema`` the EMA weights are loaded when present.
    """
    ckpt = read_checkpoint(path)
    norm = Normalizer(ckpt["normalizer"]["stats"], ckpt["normalizer"]["image_keys"])
    policy = build_policy(ckpt["policy"]["target"], ckpt["policy"]["kwargs"], ckpt["shape_meta"], norm)
    weights = ckpt["ema_state_dict"] if use_ema and ckpt["ema_state_dict"] is not None else ckpt["state_dict"]
    policy.load_state_dict(weights)
    return policy.to(device).eval(), ckpt
