"""The operator's live view of a running control loop in the rerun viewer (``display=true`` on
``protege-record`` and ``protege-deploy``), as LeRobot's ``--display_data`` gives its operators.

Each cycle the loop hands :meth:`LiveView.put` the newest observation frame (the cameras as the
policy sees them, the measured TCP, the gripper) and the cycle's record (the commanded TCP, the
safety filter's clips). ``put`` never waits: it drops the cycle when the viewer's thread is behind
(a queue of 4), and that thread does all of rerun's work, so the loop's timing does not move
(``benchmarks/teleop_rt.py`` measures it).

Shown: ``cameras/<name>`` images; ``tcp/commanded/{x,y,z}`` and ``tcp/measured/{x,y,z}`` (m, base
frame) as time series and ``tcp/path`` as 3-D points; ``gripper/{commanded,measured}`` (m);
``safety/clips`` (the clips of the cycle, one text line each); on the loop clock's timeline ``time``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np


class LiveView:
    """Stream cycles to rerun from a thread of its own.

    Args:
        save: write a .rrd file instead of spawning the viewer (for a machine with no display,
            or to look later: ``rerun <file>``).
        app_id: rerun's application id.

    Raises:
        ImportError: rerun-sdk is not installed (says how to install it).
    """

    def __init__(self, save: str | None = None, app_id: str = "protege-live"):
        try:
            import rerun as rr
        except ImportError as e:
            raise ImportError("display=true needs rerun-sdk: pip install 'protege[viewer]'") from e
        self.rr = rr
        self.rec = rr.RecordingStream(app_id)
        if save:
            self.rec.save(str(save))
        else:
            self.rec.spawn()
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.dropped = self.shown = 0
        self._thread = threading.Thread(target=self._run, name="liveview", daemon=True)
        self._thread.start()

    def put(self, t: float, obs: Mapping[str, np.ndarray], cycle: Mapping[str, Any]) -> None:
        """Hand one cycle over (never waits; drops it when the viewer is behind)."""
        try:
            self.q.put_nowait((t, obs, cycle))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        rr, rec = self.rr, self.rec
        while True:
            item = self.q.get()
            if item is None:
                return
            t, obs, cycle = item
            rec.set_time("time", duration=float(t))
            for key, v in obs.items():
                v = np.asarray(v)
                if v.ndim == 3 and v.shape[-1] == 3 and v.dtype == np.uint8:
                    rec.log(f"cameras/{key}", rr.Image(v))
            meas = np.asarray(obs["tcp_pose"], float)[:3] if "tcp_pose" in obs else cycle.get("meas")
            cmd = cycle.get("cmd")
            for name, p in (("commanded", cmd), ("measured", meas)):
                if p is not None:
                    for axis, x in zip("xyz", np.asarray(p, float)):
                        rec.log(f"tcp/{name}/{axis}", rr.Scalars(float(x)))
            if cmd is not None:
                rec.log("tcp/path", rr.Points3D([np.asarray(cmd, float)], radii=0.003))
            if cycle.get("width") is not None:
                rec.log("gripper/commanded", rr.Scalars(float(cycle["width"])))
            if "gripper_width" in obs:
                rec.log("gripper/measured", rr.Scalars(float(np.asarray(obs["gripper_width"]).ravel()[0])))
            if cycle.get("clipped"):
                rec.log("safety/clips", rr.TextLog(", ".join(cycle["clipped"])))
            self.shown += 1

    def close(self) -> None:
        """Show what is queued, then stop."""
        self.q.put(None)
        self._thread.join(timeout=10.0)
        self.rec.flush()
