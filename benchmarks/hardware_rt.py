"""Real-time quality of the hardware drivers on this machine, through their real client libraries.

1. **Servo stream** (``protege.robot.ur.URRobot`` through ``ur-rtde`` against ``protege-ur-sim``
   on loopback): the period of the servo process's set-points (target 2 ms at 500 Hz) and its
   jitter |period - 2 ms| (p50, p99, max), while the caller sends a 10 Hz path; and the age of
   the newest state sample as the caller sees it.
2. **Camera frame latency** (``RealSenseSource`` in a ``ThreadedCamera`` through pyrealsense2's
   ``rs.software_device``): from pushing a frame into librealsense to the frame being readable
   from the camera's ring buffer, at 30 fps, 3 cameras at once.

Prints a table and writes ``results/hardware_rt.json`` with the command, commit and machine.

    python benchmarks/hardware_rt.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from machine import write_result  # noqa: E402


def pct(x) -> dict:
    x = np.asarray(x, float)
    return {"p50": round(float(np.percentile(x, 50)), 4), "p99": round(float(np.percentile(x, 99)), 4),
            "max": round(float(x.max()), 4), "n": int(len(x))}


def servo_stream(seconds: float, host: str) -> dict:
    from protege.robot.ur import URRobot

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    sim = subprocess.Popen([str(BIN / "protege-ur-sim"), "--host", host], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = sim.stdout.readline()
        assert "stand-in on" in line, line
        ages = []
        with URRobot(host=host, tcp_offset=[0, 0, 0.1558, 0, 0, -np.pi / 2]) as robot:
            s0 = robot.state()
            t0 = time.monotonic()
            k = 0
            while time.monotonic() - t0 < seconds:
                k += 1
                phase = 2 * np.pi * 0.2 * (k / 10)
                robot.servo_tcp(s0.tcp_position + 0.05 * np.array([np.sin(phase), 1 - np.cos(phase), 0]), s0.tcp_quat,
                                t0 + k / 10)
                while time.monotonic() < t0 + k / 10:
                    ages.append(time.monotonic() - robot.state().timestamp)
                    time.sleep(0.01)
            cycles = robot.servo_cycle_times()
        periods = np.diff(cycles[cycles >= t0 + 0.5])
        return {"period_ms": pct(periods * 1e3), "jitter_ms": pct(np.abs(periods - 0.002) * 1e3),
                "state_age_ms": pct(np.array(ages) * 1e3), "rate_hz": round(1 / float(np.mean(periods)), 1)}
    finally:
        sim.stdin.write("quit\n")
        sim.stdin.flush()
        sim.wait(timeout=10)


def camera_latency(seconds: float) -> dict:
    import pyrealsense2 as rs

    from protege.robot.frames import ThreadedCamera
    from protege.robot.realsense import RealSenseSource

    W, H, FPS = 640, 480, 30
    devs, cams, pushes = [], [], []
    for c in range(3):
        dev = rs.software_device()
        dev.register_info(rs.camera_info.serial_number, f"BENCH{c}")
        sensor = dev.add_sensor("RGB Camera")
        intr = rs.intrinsics()
        intr.width, intr.height, intr.ppx, intr.ppy, intr.fx, intr.fy = W, H, W / 2, H / 2, 600.0, 600.0
        intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp = rs.stream.color, 0, c, W, H, FPS, 3
        vs.fmt, vs.intrinsics = rs.format.rgb8, intr
        profile = sensor.add_video_stream(vs).as_video_stream_profile()
        devs.append((dev, sensor, profile))
        cams.append(ThreadedCamera(RealSenseSource(f"BENCH{c}", W, H, FPS, device=dev), f"cam{c}", capacity=256))
        pushes.append({})
    time.sleep(0.5)
    pixels = np.zeros((H, W, 3), np.uint8)

    def push(c):
        _, sensor, profile = devs[c]
        t0 = time.monotonic()
        for i in range(int(seconds * FPS)):
            time.sleep(max(0.0, t0 + i / FPS - time.monotonic()))
            f = rs.software_video_frame()
            f.pixels, f.stride, f.bpp = pixels, W * 3, 3
            f.timestamp, f.domain = time.time() * 1000.0, rs.timestamp_domain.global_time
            f.frame_number, f.profile = i, profile
            pushes[c][i] = time.monotonic()
            sensor.on_video_frame(f)

    seen = [{} for _ in cams]

    def watch(c):
        last = -1
        t_end = time.monotonic() + seconds + 1.0
        while time.monotonic() < t_end:
            f = cams[c].read()
            if f.frame_index != last:
                seen[c][f.frame_index] = time.monotonic()
                last = f.frame_index
            time.sleep(0.0005)

    threads = [threading.Thread(target=fn, args=(c,)) for c in range(3) for fn in (push, watch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # frames missing between the first and the last frame the ring buffers still hold
    dropped = 0
    for cam in cams:
        idx = [f.frame_index for f in cam.frames(256)]
        dropped += idx[-1] - idx[0] + 1 - len(idx)
        cam.close()
    lat = [seen[c][i] - pushes[c][i] for c in range(3) for i in seen[c] if i in pushes[c]]
    return {"latency_ms": pct(np.array(lat) * 1e3), "frames": sum(len(p) for p in pushes), "size": f"{W}x{H}",
            "fps": FPS, "cameras": 3, "frames_not_seen_by_the_poller": int(sum(len(p) - len(s) for p, s in zip(pushes, seen))),
            "dropped_in_ring": int(dropped)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--host", default="127.0.0.40", help="loopback address for the stand-in")
    ap.add_argument("--out", default=str(HERE / "results" / "hardware_rt.json"))
    args = ap.parse_args()
    servo = servo_stream(args.seconds, args.host)
    cam = camera_latency(args.seconds)
    print(f"{'measure':<44} {'p50':>8} {'p99':>8} {'max':>8}")
    for name, d in [("servoL set-point period (ms, target 2.0)", servo["period_ms"]),
                    ("servoL period jitter |period - 2 ms| (ms)", servo["jitter_ms"]),
                    ("state age seen by the caller (ms)", servo["state_age_ms"]),
                    ("camera push -> readable (ms), 3 x 640x480@30", cam["latency_ms"])]:
        print(f"{name:<44} {d['p50']:>8.3f} {d['p99']:>8.3f} {d['max']:>8.3f}")
    print(f"servo rate {servo['rate_hz']} Hz; camera frames {cam['frames']}, dropped {cam['dropped_in_ring']}")
    write_result(args.out, "hardware_rt", seconds=args.seconds, servo=servo, camera=cam)


if __name__ == "__main__":
    main()
