"""The UR controller stand-in's dashboard server (port 29999): one text line per request, one reply line.

Replies are those of Universal Robots' "Dashboard Server e-Series, port 29999" manual (PolyScope
5.11). What the stand-in does with each request:

* emulated: ``PolyscopeVersion``, ``get serial number``, ``get robot model``, ``is in remote
  control`` (always true), ``robotmode``, ``safetystatus`` / ``safetymode``, ``running``,
  ``programState``, ``stop``, ``pause``, ``power on`` (POWER_OFF -> IDLE), ``power off`` (the program
  stops, the robot is POWER_OFF and refuses programs), ``brake release`` (IDLE -> RUNNING),
  ``unlock protective stop`` (refused for 5 s of controller time after the stop, as the controller
  refuses it), ``close safety popup``, ``close popup``, ``popup <text>``, ``addToLog <text>``,
  ``get loaded program``, ``load <file>`` (the stand-in has no program files: ``File not found``),
  ``play`` (no program loaded: ``Failed to execute: play``), ``quit``;
* anything else: ``could not understand: '<request>'``, the controller's reply to a request it
  does not know.
"""

from __future__ import annotations

POLYSCOPE_VERSION = "URSoftware 5.11.1.108318 (Mar 22 2021)"
SERIAL_NUMBER = "20235500001"
UNLOCK_DELAY_S = 5.0  # the controller refuses to unlock a protective stop sooner


class Dashboard:
    """Answers dashboard requests against the controller's state.

    Args:
        ctrl: the controller (:class:`~protege.sim.ur_controller.URControllerSim`).
    """

    def __init__(self, ctrl):
        self.ctrl = ctrl

    def reply(self, request: str) -> str | None:
        """The reply line (without its newline) to one request; None for ``quit`` (close the connection)."""
        c = self.ctrl
        req = request.strip()
        low = req.lower()
        if low == "quit":
            return None
        simple = {"polyscopeversion": POLYSCOPE_VERSION, "get serial number": SERIAL_NUMBER,
                  "get robot model": "UR5", "is in remote control": "true",
                  "get loaded program": "No program loaded", "close safety popup": "closing safety popup",
                  "close popup": "closing popup", "restart safety": "Restarting safety"}
        if low in simple:
            return simple[low]
        actions = {"stop": ("Stopped", lambda: c.stop_program("dashboard stop")),
                   "pause": ("Pausing program", lambda: c.stop_program("dashboard pause")),
                   "power on": ("Powering on", lambda: c.power("on")),
                   "power off": ("Powering off", lambda: c.power("off")),
                   "brake release": ("Brake releasing", lambda: c.power("brake release"))}
        if low in actions:
            answer, act = actions[low]
            act()
            return answer
        if low == "play":
            return "Failed to execute: play"  # no program loaded: the stand-in runs programs sent to port 30003
        if low.startswith("load "):
            return f"File not found: {req[5:].strip()}"
        if low.startswith("popup "):
            c.log(f"popup: {req[6:].strip()}")
            return "showing popup"
        if low.startswith("addtolog "):
            c.log(f"log: {req[9:].strip()}")
            return "Added log message"
        if low == "running":
            return f"Program running: {str(c.running).lower()}"
        if low == "programstate":
            return f"PLAYING {c.program_name}" if c.running else "STOPPED <unnamed>"
        if low == "robotmode":
            return "Robotmode: " + c.robot_mode_name
        if low in ("safetystatus", "safetymode"):
            name = ("ROBOT_EMERGENCY_STOP" if c.estop else "PROTECTIVE_STOP" if c.protective_stop else "NORMAL")
            return ("Safetystatus: " if low == "safetystatus" else "Safetymode: ") + name
        if low == "unlock protective stop":
            if c.protective_stop and c.clock() - c.protective_stop_at < UNLOCK_DELAY_S:
                return ("Cannot unlock protective stop until 5s after occurrence. Always inspect cause of "
                        "protective stop before unlocking")
            if c.protective_stop:
                c.protective_stop = False
                c.log("protective stop unlocked")
            return "Protective stop releasing"
        return f"could not understand: '{req}'"
