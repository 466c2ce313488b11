"""Teleop devices in real time, on this machine, through their real client libraries and our stand-ins.

1. **Device to command latency**: from an input event (a key typed into a pseudo-terminal, a
   SpaceMouse motion event from the spacenavd stand-in read by the real libspnav, a gamepad event
   posted into pygame's queue, a GELLO servo turned on the Dynamixel stand-in at 1 Mbit/s read by
   the real dynamixel-sdk) to the first target handed to the robot (``servo_tcp`` / ``servo_joints``
   of the simulated UR5e) that follows it, through ``record_live``: the device thread, the control
   loop at 10 Hz, the safety filter. The loop's period dominates (an event waits for the next cycle:
   half a period on average); the device's own part is the **reader** column: event to the device
   thread's state.
2. **Live view cost**: the control loop's cycle lateness (wake - scheduled, ms) recording with the
   SpaceMouse with two 96 px cameras, without and with ``display=true`` (rerun, saved to a file),
   in one run.

Prints a table and writes ``results/teleop_rt.json`` with the command, commit and machine.

    python benchmarks/teleop_rt.py [--events 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from machine import write_result  # noqa: E402

from protege.control.cyclelog import read_log  # noqa: E402
from protege.data.writer import BackgroundWriter  # noqa: E402
from protege.robot.observation import ObservationAssembler  # noqa: E402
from protege.sim.env import SimBackend  # noqa: E402
from protege.teleop.live import record_live  # noqa: E402

SAFETY = dict(workspace_min=[-0.35, -0.8, 0.005], workspace_max=[0.35, -0.2, 0.45], max_tcp_speed=0.5)
GAP_S = 0.37  # between events: not a multiple of the 0.1 s period, so events fall at every phase of the cycle


def pct_ms(x) -> dict:
    x = np.asarray(x, float) * 1e3
    return {"p50": round(float(np.percentile(x, 50)), 2), "p99": round(float(np.percentile(x, 99)), 2),
            "max": round(float(x.max()), 2), "n": int(len(x))}


def session(device, events, cameras=(), seconds=None, view=None, joints=False):
    """Run record_live with ``device`` while ``events()`` drives it from a thread; returns the
    (time, target) of every command and the cycle log."""
    backend = SimBackend("lift", cameras=cameras, image_size=96, clock="realtime",
                         robot_kwargs=dict(max_tcp_speed=0.5, max_tcp_angular_speed=2.0))
    sent = []
    name = "servo_joints" if joints else "servo_tcp"
    orig = getattr(backend.robot, name)

    def spy(*a):
        sent.append((time.monotonic(), np.array(a[0], float)))
        return orig(*a)

    setattr(backend.robot, name, spy)
    with tempfile.TemporaryDirectory() as tmp:
        key_meta = ObservationAssembler(backend.robot, backend.gripper, backend.cameras).key_meta
        writer = BackgroundWriter(Path(tmp) / "s.zarr", fps=10, key_meta=key_meta)
        marks: list = []
        th = threading.Thread(target=lambda: marks.extend(events()), daemon=True)
        th.start()
        try:
            record_live(backend, device, writer, 1, fps=10.0, safety=SAFETY, time_limit_s=seconds, keep="all",
                        device_name="bench", max_frame_age_s=1.0, log_path=Path(tmp) / "log.jsonl", view=view)
            cycles = [r for r in read_log(Path(tmp) / "log.jsonl") if r["type"] == "cycle"]
        finally:
            writer.close()
            device.close()
            backend.close()
    th.join(timeout=5)
    return sent, marks, cycles


def latencies(sent, marks, axis=0):
    """Per 'go' mark (t, direction): the first command after it that moves ``axis`` that way."""
    out = []
    for (t, sign), (t_next, _) in zip(marks, marks[1:] + [(np.inf, 0)]):
        prev = None
        for ts, target in sent:
            if ts < t:
                prev = target
                continue
            if ts >= t_next or prev is None:
                break
            if sign * (target[axis] - prev[axis]) > 1e-6:
                out.append(ts - t)
                break
            prev = target
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=40, help="input events per device")
    ap.add_argument("--out", default=str(HERE / "results" / "teleop_rt.json"))
    args = ap.parse_args()
    n = args.events
    seconds = 2.0 + n * 2 * GAP_S + 1.0
    rows, reader = {}, {}

    # -- keyboard: keys typed into a pseudo-terminal
    from protege.teleop.devices import KeyboardDevice

    master, slave = os.openpty()
    kb = KeyboardDevice(stream=slave)

    def keys():
        time.sleep(2.0)
        marks = []
        for i in range(2 * n):
            key, sign = ("d", 1) if i % 2 == 0 else ("a", -1)
            marks.append((time.monotonic(), sign))
            os.write(master, key.encode())
            time.sleep(GAP_S)
        return marks

    sent, marks, _ = session(kb, keys, seconds=seconds)
    rows["keyboard (pty)"] = latencies(sent, marks)
    os.close(master)
    os.close(slave)

    # -- SpaceMouse: spacenavd stand-in -> libspnav
    from protege.sim.spacenavd_standin import SpacenavdStandin
    from protege.teleop.spacemouse import SpaceMouse

    with tempfile.TemporaryDirectory() as tmp:
        daemon = SpacenavdStandin(str(Path(tmp) / "spnav.sock")).start()
        sm = SpaceMouse(socket=daemon.path, fps=10, keys=False, mapping=dict(translation_scale=0.05))
        sm.reader.start()
        pick = []

        def spacemouse():
            time.sleep(2.0)
            marks = []
            for i in range(2 * n):
                x = 350 if i % 2 == 0 else -350
                e0 = sm.reader.snapshot().events
                t = time.monotonic()
                daemon.motion(x, 0, 0, 0, 0, 0)
                marks.append((t, 1 if x > 0 else -1))
                while sm.reader.snapshot().events == e0 and time.monotonic() - t < 0.2:
                    time.sleep(0.0002)
                pick.append(sm.reader.snapshot().t_event - t)
                time.sleep(GAP_S)
            return marks

        sent, marks, _ = session(sm, spacemouse, seconds=seconds)
        rows["spacemouse (spacenavd, libspnav)"], reader["spacemouse (spacenavd, libspnav)"] = latencies(sent, marks), pick
        daemon.stop()

    # -- gamepad: events in pygame's queue
    import pygame

    from protege.teleop.gamepad import Gamepad

    gp = Gamepad(fps=10, keys=False, require_attached=False, mapping=dict(translation_scale=0.05, deadband=0.0))
    gp.reader.start()
    pick = []

    def gamepad():
        r = gp.reader
        r.post(type=pygame.JOYDEVICEADDED, device_index=0, instance_id=1)
        time.sleep(0.5)
        r.post(type=pygame.JOYBUTTONDOWN, instance_id=1, joy=0, button=4)  # dead-man held throughout
        time.sleep(1.5)
        marks = []
        for i in range(2 * n):
            v = 1.0 if i % 2 == 0 else -1.0
            e0 = r.snapshot().events
            t = time.monotonic()
            r.post(type=pygame.JOYAXISMOTION, instance_id=1, joy=0, axis=0, value=v)
            marks.append((t, int(v)))
            while r.snapshot().events == e0 and time.monotonic() - t < 0.2:
                time.sleep(0.0002)
            pick.append(r.snapshot().t_event - t)
            time.sleep(GAP_S)
        return marks

    sent, marks, _ = session(gp, gamepad, seconds=seconds)
    rows["gamepad (pygame)"], reader["gamepad (pygame)"] = latencies(sent, marks), pick

    # -- GELLO: Dynamixel stand-in at 1 Mbit/s -> dynamixel-sdk GroupSyncRead at 200 Hz
    from protege.sim.dynamixel_standin import DynamixelBusStandin
    from protege.teleop.gello import Gello, GelloCalibration

    b = SimBackend("lift", cameras=(), clock="lockstep")
    b.reset(0)
    q0 = b.robot.state().joint_positions.copy()
    b.close()
    bus = DynamixelBusStandin().start()
    gello = Gello(bus.port, GelloCalibration.fit([2048] * 6, q0), ramp_s=0.1, fps=10, keys=False)
    pick = []

    def leader():
        time.sleep(2.0)
        marks, step = [], 40  # ticks: 0.06 rad
        for i in range(2 * n):
            ticks = 2048 + (step if i % 2 == 0 else 0)
            r0 = gello.reader.reads
            t = time.monotonic()
            bus.set_position(1, ticks)
            marks.append((t, 1 if i % 2 == 0 else -1))
            while time.monotonic() - t < 0.2:  # the first read that started after the turn
                got, ts, _ = gello.reader.snapshot_ticks()
                if gello.reader.reads >= r0 + 2 or (got is not None and got[0] == ticks and gello.reader.reads > r0):
                    break
                time.sleep(0.0002)
            pick.append(gello.reader.snapshot_ticks()[1] - t)
            time.sleep(GAP_S)
        return marks

    sent, marks, _ = session(gello, leader, seconds=seconds, joints=True)
    rows["gello (dynamixel-sdk, 1 Mbit/s, 7 servos)"] = latencies(sent, marks, axis=0)
    reader["gello (dynamixel-sdk, 1 Mbit/s, 7 servos)"] = pick
    bus.close()

    # -- live view: cycle lateness without and with display (SpaceMouse held still, two cameras)
    from protege.control.liveview import LiveView

    lateness = {}
    for label in ("display=false", "display=true"):
        with tempfile.TemporaryDirectory() as tmp:
            daemon = SpacenavdStandin(str(Path(tmp) / "spnav.sock")).start()
            sm = SpaceMouse(socket=daemon.path, fps=10, keys=False)
            sm.reader.start()
            view = LiveView(save=str(Path(tmp) / "live.rrd")) if label == "display=true" else None
            _, _, cycles = session(sm, lambda: [], cameras=("scene", "wrist"), seconds=20.0, view=view)
            if view is not None:
                view.close()
            lateness[label] = pct_ms([c["wake"] - c["t"] for c in cycles])
            daemon.stop()

    table = {k: pct_ms(v) for k, v in rows.items()}
    picks = {k: pct_ms(v) for k, v in reader.items()}
    print(f"\n{'device':45s} {'event -> command p50 / p99 ms':>30s} {'event -> reader p50 / p99 ms':>30s}")
    for k, v in table.items():
        p = picks.get(k)
        print(f"{k:45s} {v['p50']:>14.1f} / {v['p99']:<13.1f} "
              + (f"{p['p50']:>14.2f} / {p['p99']:<13.2f}" if p else f"{'(read in the loop)':>30s}"))
    print("\ncontrol loop at 10 Hz, cycle lateness (ms): "
          + "; ".join(f"{k}: p50 {v['p50']}, p99 {v['p99']}, max {v['max']}" for k, v in lateness.items()))
    write_result(args.out, "teleop_rt", events=n, control_hz=10, event_to_command_ms=table, event_to_reader_ms=picks,
                 cycle_lateness_ms=lateness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
