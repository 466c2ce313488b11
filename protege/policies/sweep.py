"""Sweeps: ``protege-train --multirun policy=diffusion,act train.lr=1e-4,3e-4 ...`` runs every
combination with hydra's basic launcher (one after the other, each in ``<run_dir>/<job number>/``)
and ends with one table of the runs' final figures, also written to ``<run_dir>/sweep.json``.

On a SLURM cluster, hydra's submitit launcher runs the same sweep as jobs
(``pip install hydra-submitit-launcher``, then ``hydra/launcher=submitit_slurm
hydra.launcher.partition=<partition> hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=600``);
docs/training.md has the worked example (not run here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    """A hydra callback: at the end of a multirun, print and save each run's ``result.json``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        rows = []
        for job in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
            result = job / "result.json"
            rows.append({"job": int(job.name), **(json.loads(result.read_text()) if result.exists() else {"stopped": "no result"})})
        if not rows:
            return
        (root / "sweep.json").write_text(json.dumps(rows, indent=2))
        print(f"\nsweep: {len(rows)} runs in {root} (sweep.json)")
        print(f"{'job':>4}  {'overrides':<48} {'steps':>7} {'loss':>9} {'val loss':>9}  stopped")
        common = set.intersection(*(set(r.get("overrides", [])) for r in rows)) if rows else set()
        for r in rows:
            over = " ".join(o for o in r.get("overrides", []) if o not in common)  # what the sweep varies
            fmt = lambda v: f"{v:9.4f}" if isinstance(v, (int, float)) else f"{'-':>9}"  # noqa: E731
            print(f"{r['job']:>4}  {over[:48]:<48} {r.get('step', '-'):>7} {fmt(r.get('loss'))} {fmt(r.get('val_loss'))}  "
                  f"{r.get('stopped', '')}")
