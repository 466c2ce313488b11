"""Offline action error of checkpoints: their sampled chunks against the demonstrated actions.

    python benchmarks/action_error.py --checkpoint runs/<run>/checkpoints/step_*.pt --out results/<name>.json

For each checkpoint (EMA weights when it has them, eval mode, the policy's own inference: DDIM for
Diffusion Policy, the prior mean z = 0 for ACT) the first ``n_action_steps`` actions of the chunk
predicted on a demonstration window are compared with the actions the demonstrator took there,
on the validation episodes the trainer held out (the same split: the checkpoint's seed and
val_ratio) and on as many training windows. Reported per action part, in the store's units: TCP
position error (mm, Euclidean), rotation error (deg, of the 6-D rotation's frame), gripper width
error (mm); padded steps do not count. The task's dataset is read from the checkpoint's config
unless ``--dataset`` is given.

For diagnosis without a simulator: a checkpoint whose closed-loop success falls while its
training loss falls shows here whether its open-loop predictions got worse too. Prints a table
and writes the command, commit, machine and figures to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from machine import write_result  # benchmarks/machine.py
from protege.data.dataset import load_task_data
from protege.policies.checkpoint import load_policy
from protege.policies.tensors import to_torch
from protege.robot.actions import action_to_pose


def chunk_errors(pred: np.ndarray, demo: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean errors of predicted actions ``pred`` (B, n, 10) against ``demo`` (B, n, 10) where ``mask`` (B, n).

    Returns position_mm, rotation_deg, width_mm."""
    p, d = pred[mask], demo[mask]
    pos = np.linalg.norm(p[:, :3] - d[:, :3], axis=1) * 1000
    rot = []
    for a, b in zip(p, d):
        _, qa, _ = action_to_pose(a)
        _, qb, _ = action_to_pose(b)
        rot.append(np.degrees((Rotation.from_quat(qa) * Rotation.from_quat(qb).inv()).magnitude()))
    return {"position_mm": float(pos.mean()), "rotation_deg": float(np.mean(rot)),
            "width_mm": float(np.abs(p[:, -1] - d[:, -1]).mean() * 1000)}


@torch.no_grad()
def evaluate(path: str, dataset: str | None, windows: int, batch: int) -> dict:
    policy, ckpt = load_policy(path)
    cfg = ckpt["config"]
    data = load_task_data(dataset or cfg["dataset"], cfg["task"]["obs"], cfg["task"]["action"])
    train, val = data.samplers(policy.horizon, policy.n_obs_steps, *policy.sampler_padding,
                               cfg["train"]["val_ratio"], cfg["seed"])
    if val is None:
        raise SystemExit(f"{path}: its run held out no validation episodes (train.val_ratio = 0)")
    n, start = policy.n_action_steps, policy.n_obs_steps - 1
    out = {"checkpoint": path, "train_step": int(ckpt["train_state"]["step"])}
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for name, sampler in (("val", val), ("train", train)):
        ids = np.arange(len(sampler)) if len(sampler) <= windows else np.sort(rng.choice(len(sampler), windows, replace=False))
        preds, demos, masks = [], [], []
        for i in range(0, len(ids), batch):
            b = sampler.sample(ids[i : i + batch])
            obs = to_torch(b, data.shape_meta["obs"], data.image_keys, policy.device)["obs"]
            preds.append(policy.predict_action(obs).float().cpu().numpy()[:, :n])
            demos.append(b["action"][:, start : start + n])
            masks.append(b["mask"][:, start : start + n])
        out[name] = {"windows": int(len(ids)), **chunk_errors(np.concatenate(preds), np.concatenate(demos), np.concatenate(masks))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", nargs="+", required=True)
    ap.add_argument("--dataset", default=None, help="the store (default: the checkpoint's own)")
    ap.add_argument("--windows", type=int, default=256, help="at most this many windows per split")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = [evaluate(p, args.dataset, args.windows, args.batch) for p in args.checkpoint]
    print("| checkpoint | step | val: position mm | rotation deg | width mm | train: position mm | rotation deg | width mm |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        v, t = r["val"], r["train"]
        print(f"| {Path(r['checkpoint']).name} | {r['train_step']} | {v['position_mm']:.1f} | {v['rotation_deg']:.2f} | "
              f"{v['width_mm']:.1f} | {t['position_mm']:.1f} | {t['rotation_deg']:.2f} | {t['width_mm']:.1f} |")
    write_result(args.out, "action_error", threads=torch.get_num_threads(), rows=rows)


if __name__ == "__main__":
    main()
