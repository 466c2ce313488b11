"""``protege-hardware check``: what is connected, and is it configured right, before any arm moves.

    protege-hardware check robot=ur5e robot.host=192.168.1.10 camera=realsense
    protege-hardware list-cameras

It lists the RealSense devices (serial, model, colour profiles) and the UVC video devices; then,
for the configured ``robot=`` / ``gripper=`` / ``camera=`` (the same config groups as
``protege-deploy``), it reads the arm's state through ``ur-rtde``'s receive interface (modes,
joints, TCP pose, the state stream's rate) and the dashboard's round-trip latency, queries the
gripper's registers, and opens each camera for a second (size, frame rate, timestamp age). It
moves nothing: no control script is started and the gripper is not activated. Every problem is
printed with what to do; the exit code is 0 when everything configured answered, 1 otherwise.
"""

from __future__ import annotations

import glob
import socket
import sys
import time

import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from protege.robot import robotiq
from protege.robot.interfaces import DeviceError

OK, FAIL = "ok  ", "FAIL"


def controller_stamps(receive, seconds: float) -> list[float]:
    """The distinct controller timestamps (s) an ``RTDEReceiveInterface`` shows over ``seconds``
    of polling: one per state package it received."""
    stamps: list[float] = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        ts = receive.getTimestamp()
        if not stamps or ts != stamps[-1]:
            stamps.append(ts)
        time.sleep(0.0005)
    return stamps


def _line(status: str, what: str, detail: str) -> None:
    print(f"  [{status}] {what:<22} {detail}", flush=True)


def list_cameras() -> int:
    """Print the RealSense devices with their colour profiles, and the UVC video devices."""
    print("cameras:")
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        _line(FAIL, "RealSense", f"pyrealsense2 is not importable ({e}): pip install 'protege[realsense]' and "
                                 "apt install libusb-1.0-0")
    else:
        devices = list(rs.context().query_devices())
        if not devices:
            _line(OK, "RealSense", "no device connected")
        for d in devices:
            info = {k: d.get_info(getattr(rs.camera_info, k)) for k in ("name", "serial_number", "firmware_version")
                    if d.supports(getattr(rs.camera_info, k))}
            profiles = sorted({f"{p.as_video_stream_profile().width()}x{p.as_video_stream_profile().height()}@{p.fps()}"
                               for s in d.query_sensors() for p in s.get_stream_profiles()
                               if p.stream_type() == rs.stream.color and p.format() == rs.format.rgb8})
            _line(OK, f"RealSense {info.get('serial_number', '?')}",
                  f"{info.get('name', '?')} fw {info.get('firmware_version', '?')}; RGB8 {', '.join(profiles) or 'none'}")
    videos = sorted(glob.glob("/dev/video*"))
    _line(OK, "UVC", ", ".join(videos) if videos else "no /dev/video* device")
    return 0


def _check_robot(cfg: DictConfig) -> bool:
    name = cfg.robot.name
    if name == "sim":
        _line(OK, "robot", "robot=sim: the simulated UR5e (nothing to connect)")
        return True
    host = cfg.robot.host
    ok = True
    try:
        import rtde_receive
    except ImportError:
        _line(FAIL, "robot", "ur-rtde is not installed: pip install 'protege[ur]'")
        return False
    # dashboard: reachable, remote control, round trip
    try:
        with socket.create_connection((host, 29999), timeout=2.0) as s:
            f = s.makefile("rb")
            f.readline()
            rtts, replies = [], {}
            for cmd in ["PolyscopeVersion", "robotmode", "safetystatus", "is in remote control"] + ["robotmode"] * 19:
                t = time.perf_counter()
                s.sendall((cmd + "\n").encode())
                replies[cmd] = f.readline().decode().strip()
                rtts.append(time.perf_counter() - t)
            rt = np.array(rtts[4:]) * 1e3
            _line(OK, "dashboard 29999", f"{replies['PolyscopeVersion']}; round trip p50 {np.median(rt):.2f} ms, "
                                         f"max {rt.max():.2f} ms")
            _line(OK if "RUNNING" in replies["robotmode"] else FAIL, "robot mode",
                  replies["robotmode"] + ("" if "RUNNING" in replies["robotmode"] else
                                          ": power on and release the brakes on the pendant"))
            normal = replies["safetystatus"].endswith("NORMAL")
            ok &= normal and "RUNNING" in replies["robotmode"]
            _line(OK if normal else FAIL, "safety", replies["safetystatus"] + ("" if normal else
                  ": inspect the cause, then clear it on the pendant"))
            remote = replies["is in remote control"].strip().lower() == "true"
            ok &= remote
            _line(OK if remote else FAIL, "remote control", "yes" if remote else
                  "no: enable Remote Control (Settings > System) and switch the pendant to Remote")
    except OSError as e:
        _line(FAIL, "dashboard 29999", f"no answer from {host} ({e}): check the IP, the cable and that the "
                                       "controller is booted")
        return False
    # RTDE: state stream
    try:
        r = rtde_receive.RTDEReceiveInterface(host, float(cfg.robot.backend.robot.frequency),
                                              ["timestamp", "actual_q", "actual_TCP_pose", "runtime_state"])
    except RuntimeError as e:
        _line(FAIL, "RTDE 30004", f"{e}")
        return False
    try:
        stamps = controller_stamps(r, 0.5)
        rate = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9) if len(stamps) > 1 else 0.0
        step = np.median(np.diff(stamps)) if len(stamps) > 1 else float("nan")
        _line(OK, "RTDE 30004", f"state every {step * 1e3:.1f} ms of controller time (frequency "
                                f"{cfg.robot.backend.robot.frequency}); this PC read {rate:.0f} samples/s")
        q = np.array(r.getActualQ())
        pose = np.array(r.getActualTCPPose())
        _line(OK, "joints rad", np.array2string(q, precision=3))
        _line(OK, "TCP pose", f"{np.array2string(pose[:3], precision=4)} m, rotvec {np.array2string(pose[3:], precision=3)}"
                              " (with the controller's own TCP; protege-deploy sets robot.backend.robot.tcp_offset)")
        safety = OmegaConf.to_container(cfg.robot.safety)
        lo, hi = np.array(safety["joint_min"]), np.array(safety["joint_max"])
        inside = np.all((q > lo) & (q < hi))
        ok &= bool(inside)
        if not inside:
            _line(FAIL, "joint limits", "a joint is outside robot.safety.joint_min/max")
    finally:
        r.disconnect()
    return ok


def _check_gripper(cfg: DictConfig) -> bool:
    dev = OmegaConf.select(cfg, "gripper.device")
    if cfg.robot.name == "sim" or dev is None:
        _line(OK, "gripper", "none configured" if dev is None else "simulated with the arm")
        return True
    host, port = dev.host, int(dev.port)
    try:
        with socket.create_connection((host, port), timeout=float(dev.timeout_s)) as s:
            values, t = {}, time.perf_counter()
            for reg in ("ACT", "STA", "POS", "FLT", "OBJ"):
                words = robotiq.ask(s, f"GET {reg}").split()
                values[reg] = int(words[1]) if len(words) == 2 and words[0] == reg else None
            rtt = (time.perf_counter() - t) / 5 * 1e3
    except (OSError, DeviceError) as e:
        _line(FAIL, f"gripper {port}", f"no Robotiq URCap at {host}:{port} ({e}): install the URCap, connect the gripper")
        return False
    active = values["STA"] == 3
    _line(OK if values["FLT"] == 0 else FAIL, f"gripper {port}",
          f"{'active' if active else 'not activated (protege-deploy activates it)'}, position {values['POS']}/255, "
          f"fault {values['FLT']}, round trip {rtt:.2f} ms")
    return values["FLT"] == 0


def _check_cameras(cfg: DictConfig) -> bool:
    import hydra

    devices = OmegaConf.select(cfg, "camera.devices")
    if devices is None:
        _line(OK, "cameras", f"camera={cfg.camera.name}: simulated {list(cfg.camera.names)}")
        return True
    ok = True
    for name, dcfg in devices.items():
        try:
            cam = hydra.utils.instantiate(dcfg, name=name, _convert_="all")
        except Exception as e:  # noqa: BLE001 (report and go on to the next device)
            _line(FAIL, f"camera {name}", f"{type(e).__name__}: {e}")
            ok = False
            continue
        try:
            first = cam.read()
            time.sleep(1.0)
            frames = cam.frames(1000)
            fps = (len(frames) - 1) / max(frames[-1].timestamp - frames[0].timestamp, 1e-9) if len(frames) > 1 else 0
            age = (time.monotonic() - frames[-1].timestamp) * 1e3
            h, w = first.rgb.shape[:2]
            _line(OK, f"camera {name}", f"{w}x{h}, {fps:.1f} fps, newest frame {age:.0f} ms old"
                                        f"{', dropped frames' if frames[-1].frame_index - frames[0].frame_index >= len(frames) else ''}")
        except Exception as e:  # noqa: BLE001
            _line(FAIL, f"camera {name}", f"{e}")
            ok = False
        finally:
            cam.close()
    return ok


def check(overrides: list[str]) -> int:
    with initialize_config_module("protege.configs", version_base=None):
        cfg = compose("deploy", overrides=overrides)
    print(f"protege-hardware check: robot={cfg.robot.name} gripper={OmegaConf.select(cfg, 'gripper.name')} "
          f"camera={cfg.camera.name}")
    list_cameras()
    print("configured devices:")
    results = [_check_robot(cfg), _check_gripper(cfg), _check_cameras(cfg)]
    verdict = all(results)
    print("everything configured answered" if verdict else "some devices are missing or misconfigured (see FAIL above)")
    return 0 if verdict else 1


USAGE = """usage: protege-hardware check [robot=ur5e robot.host=IP] [gripper=robotiq_2f85|none] [camera=realsense|opencv] [key=value ...]
       protege-hardware list-cameras
       protege-hardware calibrate-gello --port PORT --out FILE

check         read the arm's state and the dashboard round trip, query the gripper, open each camera for a
              second; moves nothing. Exit code 0 when everything configured answered.
list-cameras  RealSense devices (serials and colour profiles) and /dev/video* devices.
calibrate-gello --port PORT --out FILE [--signs 1,1,-1,1,1,1] [--baudrate 1000000] [--no-gripper]
              calibrate a GELLO leader arm (hold it in the follower's home pose, then release and squeeze
              its trigger); teleop=gello reads FILE (teleop.device.calibration=FILE).
Config groups and keys are protege-deploy's (protege-deploy --help)."""


def calibrate_gello(argv: list[str]) -> int:
    """``protege-hardware calibrate-gello``: see :func:`protege.teleop.gello.calibrate`."""
    import argparse

    from protege.teleop.gello import calibrate
    from protege.teleop.velocity import TeleopDeviceLost

    ap = argparse.ArgumentParser(prog="protege-hardware calibrate-gello",
                                 description="Calibrate a GELLO leader arm and save it for teleop=gello.")
    ap.add_argument("--port", required=True, help="the U2D2's serial port (/dev/serial/by-id/... is stable)")
    ap.add_argument("--out", required=True, help="the calibration file to write (JSON)")
    ap.add_argument("--ids", default="1,2,3,4,5,6", help="the joint servos' ids, base first (default 1,...,6)")
    ap.add_argument("--gripper-id", type=int, default=7, help="the trigger's servo id (default 7)")
    ap.add_argument("--no-gripper", action="store_true", help="the leader has no trigger")
    ap.add_argument("--signs", default="1,1,1,1,1,1", help="+1 / -1 per joint: servos turning against their joint")
    ap.add_argument("--baudrate", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    try:
        ids = [int(x) for x in args.ids.split(",")]
        signs = [float(x) for x in args.signs.split(",")]
        calibrate(args.port, args.out, ids, None if args.no_gripper else args.gripper_id, signs, baudrate=args.baudrate)
    except (TeleopDeviceLost, ValueError) as e:
        print(f"protege-hardware calibrate-gello: {e}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("\nprotege-hardware calibrate-gello: interrupted; nothing saved", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "calibrate-gello":
        return calibrate_gello(argv[1:])
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("check", "list-cameras"):
        print(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "list-cameras":
        return list_cameras()
    try:
        return check(argv[1:])
    except Exception as e:  # noqa: BLE001 (a config error: say it plainly)
        print(f"protege-hardware: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
