"""The command loop both sides of ``vs_lerobot.py`` run (``protege_worker.py`` under our python,
``lerobot_worker.py`` under LeRobot's): it imports neither protege nor lerobot."""

from __future__ import annotations

import json
import sys
import time

import torch


def serve(policy: torch.nn.Module, commands: dict, info: dict | None = None) -> None:
    """Print one JSON line about ``policy`` (``params_M``, ``torch`` and ``info``), then run the
    commands named one per line on stdin (``commands``: name -> function of no arguments) until
    ``quit`` or the end of stdin, answering each with one JSON line ``{"s": seconds it took}``."""
    print(json.dumps({"params_M": sum(p.numel() for p in policy.parameters()) / 1e6, "torch": torch.__version__,
                      **(info or {})}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        t = time.perf_counter()
        commands[command]()
        print(json.dumps({"s": time.perf_counter() - t}), flush=True)
