"""The arm model of the UR controller stand-in: the simulated UR5e's kinematics, motions and safety checks.

Frames and units are the controller's: a pose is the TCP in the base frame ``[x, y, z, rx, ry, rz]``
(m, rotation vector rad), the TCP being the flange plus the offset set by ``set_tcp`` (none at start,
as on a fresh controller); joints are rad.

* Kinematics: forward (:meth:`URArm.forward_kinematics`), inverse by damped least squares from a
  seed (:meth:`URArm.inverse_kinematics`; the real controller's solver is analytic, so this one
  finds the solution nearest the seed and fails where no solution exists or lies beyond the joint
  limits, as ``get_inverse_kin`` does).
* Motions: moveJ / moveL over the trapezoidal profile's duration (linear in joint / Cartesian space);
  a path of moves one after the other, each starting when the previous one ends (the blend radius is
  not emulated: the arm passes through every waypoint); servoJ / servoL reaching the target
  ``lookahead_time`` s after it arrives; speedJ / speedL ramped at the commanded acceleration, capped
  at the UR5e's joint speed limit, and stopped at the commanded deceleration.
* Safety: a protective stop when a joint comes within 0.01 rad of its limit, or the arm or gripper
  pushes on the table with more than ``table_force_limit`` N (:meth:`URArm.safety_violation`).
"""

from __future__ import annotations

import mujoco
import numpy as np

from protege.robot.trajectory import quat_angle

JOINT_SPEED_LIMIT = np.pi   # rad/s: every UR5e joint's maximum speed (180 deg/s, UR5e datasheet)
LIMIT_MARGIN = 0.01         # rad from a joint limit that trips a protective stop


def rotvec_to_matrix(rotvec) -> np.ndarray:
    """(3, 3) rotation matrix of a rotation vector (3,) rad (MuJoCo's routines: scipy's cost ~0.1 ms a call)."""
    rotvec = np.asarray(rotvec, float)
    angle = float(np.linalg.norm(rotvec))
    quat, mat = np.array([1.0, 0.0, 0.0, 0.0]), np.empty(9)
    if angle > 1e-12:
        mujoco.mju_axisAngle2Quat(quat, rotvec / angle, angle)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) rad, angle in [0, pi], of a (3, 3) rotation matrix."""
    quat, vel = np.empty(4), np.empty(3)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(R, dtype=float).ravel())
    if quat[0] < 0:
        quat = -quat
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


def pose_to_matrix(pose) -> np.ndarray:
    """(4, 4) homogeneous transform of a UR pose [x, y, z, rx, ry, rz] (m, rotation vector rad)."""
    T = np.eye(4)
    T[:3, :3] = rotvec_to_matrix(pose[3:6])
    T[:3, 3] = pose[:3]
    return T


def matrix_to_pose(T: np.ndarray) -> np.ndarray:
    """UR pose (6,) [x, y, z, rx, ry, rz] of a (4, 4) transform."""
    return np.concatenate([T[:3, 3], matrix_to_rotvec(T[:3, :3])])


def pose_trans(p_from, p_from_to) -> np.ndarray:
    """URScript's ``pose_trans``: the pose (6,) ``p_from_to`` given in the frame ``p_from``, in the base frame."""
    return matrix_to_pose(pose_to_matrix(p_from) @ pose_to_matrix(p_from_to))


def trapezoid_duration(distance: float, speed: float, accel: float) -> float:
    """Time s to cover ``distance`` from rest to rest at top ``speed`` and ``accel`` (trapezoidal profile)."""
    speed, accel = max(speed, 1e-6), max(accel, 1e-6)
    if distance > speed * speed / accel:
        return distance / speed + speed / accel
    return 2.0 * np.sqrt(distance / accel)


class MotionError(Exception):
    """A motion the controller refuses (no inverse kinematics, a target beyond the joint limits):
    the program stops with this message, as the real controller's runtime error stops it."""


class URArm:
    """The simulated UR5e as the controller sees it.

    Args:
        backend: a :class:`~protege.sim.env.SimBackend` in lockstep (the controller's loop paces it).
        table_force_limit: N of contact force between the robot and the table that trips a protective stop.
    """

    def __init__(self, backend, table_force_limit: float = 150.0):
        self.backend, self.robot, self.scene = backend, backend.robot, backend.scene
        self.model, self.data = self.scene.model, self.scene.data
        m = self.model
        self.table_force_limit = float(table_force_limit)
        self._flange_site = m.site("attachment_site").id
        self._flange_body = int(m.site_bodyid[self._flange_site])
        self._table_geom = m.geom("table").id
        arm_root = m.body("shoulder_link").id
        self._robot_geoms = np.array([g for g in range(m.ngeom)
                                      if m.geom_bodyid[g] >= arm_root and m.body(m.geom_bodyid[g]).name not in self.scene.objects])
        # fixed transform flange -> the simulated TCP site (the 2F-85's pinch point)
        self._flange_to_site = np.linalg.inv(self._site_T(self._flange_site)) @ self._site_T(self.scene.tcp_site)
        self.limits = self.robot.joint_limits
        self.tcp_offset = np.zeros(6)
        self._ik = mujoco.MjData(m)  # scratch state of the inverse kinematics
        self._jacp, self._jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        self._path: list = []        # moves still to start: (kind, target, speed, accel)
        self._move_end = 0.0
        self._speed: tuple[str, np.ndarray, float] | None = None  # mode, target velocity, acceleration
        self._vel = np.zeros(6)
        self.capped: str | None = None  # why the last speed command was capped (logged once by the caller)
        self.speed_fraction = 1.0  # the speed slider: moves and speed commands scaled by it

    # -- kinematics -------------------------------------------------------------------------------
    def _site_T(self, site: int) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.data.site_xmat[site].reshape(3, 3)
        T[:3, 3] = self.data.site_xpos[site]
        return T

    def _tcp_T(self, xmat, xpos, tcp_offset=None) -> np.ndarray:
        """Controller TCP (flange + tcp_offset) from the sites' arrays of an MjData."""
        F = np.eye(4)
        F[:3, :3] = xmat[self._flange_site].reshape(3, 3)
        F[:3, 3] = xpos[self._flange_site]
        return F @ pose_to_matrix(self.tcp_offset if tcp_offset is None else tcp_offset)

    def actual_tcp_T(self) -> np.ndarray:
        """(4, 4) the TCP now (``actual_TCP_pose``)."""
        return self._tcp_T(self.data.site_xmat, self.data.site_xpos)

    def target_tcp_T(self) -> np.ndarray:
        """(4, 4) the TCP at the commanded joints (``target_TCP_pose``)."""
        k = self._ik
        k.qpos[self.scene.arm_qpos] = self.robot.commanded_joint_positions
        mujoco.mj_kinematics(self.model, k)
        return self._tcp_T(k.site_xmat, k.site_xpos)

    def forward_kinematics(self, q=None, tcp_offset=None) -> np.ndarray:
        """``get_forward_kin``: the TCP pose (6,) at joints ``q`` (default: the commanded ones) with
        ``tcp_offset`` (6,) (default: the active one)."""
        k = self._ik
        k.qpos[self.scene.arm_qpos] = self.robot.commanded_joint_positions if q is None else q
        mujoco.mj_kinematics(self.model, k)
        return matrix_to_pose(self._tcp_T(k.site_xmat, k.site_xpos, tcp_offset))

    def inverse_kinematics(self, pose, q_near=None, max_position_error: float = 1e-10,
                           max_orientation_error: float = 1e-10, iterations: int = 200) -> np.ndarray | None:
        """``get_inverse_kin``: joints (6,) rad that put the TCP at ``pose`` (6,), nearest ``q_near``
        (default: the commanded joints); None when there is none within the joint limits.

        Damped least squares on the full pose; the tolerances are the caller's, floored at 1e-6 m
        and 1e-5 rad (the numerical solver's precision; the controller's defaults ask 1e-10).
        """
        target = pose_to_matrix(pose)
        q = np.array(self.robot.commanded_joint_positions if q_near is None else q_near, float)
        pos_tol, rot_tol = max(max_position_error, 1e-6), max(max_orientation_error, 1e-5)
        m, k, dof = self.model, self._ik, self.scene.arm_dof
        err = np.empty(6)
        for _ in range(iterations):
            k.qpos[self.scene.arm_qpos] = q
            mujoco.mj_kinematics(m, k)
            T = self._tcp_T(k.site_xmat, k.site_xpos)
            err[:3] = target[:3, 3] - T[:3, 3]
            err[3:] = T[:3, :3] @ matrix_to_rotvec(T[:3, :3].T @ target[:3, :3])
            if np.linalg.norm(err[:3]) < pos_tol and np.linalg.norm(err[3:]) < rot_tol:
                ok = np.all(q >= self.limits[0]) and np.all(q <= self.limits[1])
                return q if ok else None
            mujoco.mj_comPos(m, k)
            mujoco.mj_jac(m, k, self._jacp, self._jacr, T[:3, 3], self._flange_body)
            J = np.vstack([self._jacp[:, dof], self._jacr[:, dof]])
            dq = J.T @ np.linalg.solve(J @ J.T + 1e-6 * np.eye(6), err)
            q = q + dq * min(1.0, 0.5 / max(float(np.max(np.abs(dq))), 1e-12))  # at most 0.5 rad a step
        return None

    def site_target(self, tcp_pose) -> tuple[np.ndarray, np.ndarray]:
        """Simulated TCP-site position (3,) and quaternion (x, y, z, w) for a controller TCP pose."""
        T = pose_to_matrix(tcp_pose) @ np.linalg.inv(pose_to_matrix(self.tcp_offset)) @ self._flange_to_site
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, np.ascontiguousarray(T[:3, :3]).ravel())
        return T[:3, 3], quat[[1, 2, 3, 0]]

    def within_limits(self, q) -> bool:
        """Whether joints ``q`` (6,) lie within the joint limits (``is_within_safety_limits`` of joints)."""
        q = np.asarray(q, float)
        return bool(np.all(q >= self.limits[0] + LIMIT_MARGIN) and np.all(q <= self.limits[1] - LIMIT_MARGIN))

    # -- motions ----------------------------------------------------------------------------------
    def check_line(self, pose, start=None, samples: int = 8, q_start=None) -> np.ndarray:
        """Joints (6,) at ``pose``, solved along the straight TCP line from ``start`` (default: the
        commanded TCP; ``q_start`` its joints) at ``samples`` points; :class:`MotionError` where a
        point has no inverse kinematics."""
        start = matrix_to_pose(self.target_tcp_T()) if start is None else np.asarray(start, float)
        A, B = pose_to_matrix(start), pose_to_matrix(pose)
        dR = matrix_to_rotvec(A[:3, :3].T @ B[:3, :3])
        q = self.robot.commanded_joint_positions if q_start is None else q_start
        for s in np.linspace(0.0, 1.0, samples + 1)[1:]:
            T = np.eye(4)
            T[:3, :3] = A[:3, :3] @ rotvec_to_matrix(s * dR)
            T[:3, 3] = A[:3, 3] + s * (B[:3, 3] - A[:3, 3])
            q = self.inverse_kinematics(matrix_to_pose(T), q, 1e-4, 1e-3)
            if q is None:
                raise MotionError(f"movel: no inverse kinematics for the pose {np.round(matrix_to_pose(T), 4).tolist()} "
                                  f"on the line to {np.round(np.asarray(pose), 4).tolist()}")
        return q

    def check_joints(self, q) -> None:
        """Raise :class:`MotionError` when joints ``q`` (6,) lie beyond the joint limits."""
        if not self.within_limits(q):
            raise MotionError(f"movej: target {np.round(q, 4).tolist()} beyond the joint limits")

    def start_path(self, moves: list) -> float:
        """Start moves ``[(kind "j" | "l", target (6,), speed, accel), ...]`` one after the other, each
        checked first (:class:`MotionError` before anything moves). Returns the first move's end time."""
        q, pose = self.robot.commanded_joint_positions, matrix_to_pose(self.target_tcp_T())
        for kind, target, _, _ in moves:
            if kind == "j":
                self.check_joints(target)
                q, pose = np.asarray(target, float), self.forward_kinematics(target)
            else:
                q, pose = self.check_line(target, pose, q_start=q), np.asarray(target, float)
        self.stop_speed()
        self._path = list(moves)
        return self._next_move()

    def _next_move(self) -> float:
        kind, target, speed, accel = self._path.pop(0)
        f = max(self.speed_fraction, 1e-3)
        speed, accel = speed * f, accel * f * f
        now = self.robot.now()
        if kind == "j":
            cur = self.robot.commanded_joint_positions
            t_end = now + trapezoid_duration(float(np.max(np.abs(target - cur))), speed, accel)
            self.robot.servo_joints(target, t_end)
        else:
            cur = matrix_to_pose(self.target_tcp_T())
            dist = float(np.linalg.norm(target[:3] - cur[:3]))
            q0, q1 = np.empty(4), np.empty(4)
            mujoco.mju_mat2Quat(q0, rotvec_to_matrix(cur[3:]).ravel())
            mujoco.mju_mat2Quat(q1, rotvec_to_matrix(target[3:]).ravel())
            t_end = now + max(trapezoid_duration(dist, speed, accel), trapezoid_duration(quat_angle(q0, q1), 1.0, 2.0))
            self.robot.servo_tcp(*self.site_target(target), t_end)
        self._move_end = t_end
        return t_end

    def moving(self) -> bool:
        """Whether a move (or a path) is still under way: its time not over or the joints not settled."""
        return (bool(self._path) or self.robot.now() < self._move_end
                or float(np.max(np.abs(self.data.qvel[self.scene.arm_dof]))) >= 0.02)

    def servo(self, kind: str, target, lookahead_time: float) -> None:
        """servoJ (``kind`` "j", joints) / servoL ("l", pose): reach ``target`` ``lookahead_time`` s from now."""
        self._path, self._speed = [], None
        t = self.robot.now() + float(np.clip(lookahead_time, 0.03, 0.2))
        if kind == "j":
            self.robot.servo_joints(np.asarray(target, float), t)
        else:
            self.robot.servo_tcp(*self.site_target(target), t)

    def speed(self, kind: str, velocity, accel: float) -> None:
        """speedJ (``kind`` "j", rad/s) / speedL ("l", m/s and rad/s in the base frame): ramp toward
        ``velocity`` (6,) at ``accel`` (rad/s^2 or m/s^2), joint speeds capped at the UR5e's limit."""
        v = np.asarray(velocity, float)
        self.capped = None
        if kind == "j" and np.max(np.abs(v)) > JOINT_SPEED_LIMIT:
            self.capped = (f"speedj: {np.max(np.abs(v)):.3g} rad/s beyond the joint speed limit "
                           f"{JOINT_SPEED_LIMIT:.3g} rad/s, scaled down")
            v = v * JOINT_SPEED_LIMIT / np.max(np.abs(v))
        if self._speed is None or self._speed[0] != kind:
            self._vel = np.zeros(6)
        self._path = []
        self._speed = (kind, v, max(float(accel), 1e-3))

    def stop_speed(self, decel: float | None = None) -> None:
        """Stop a speed command: at ``decel`` (rad/s^2 or m/s^2) when given, else at once."""
        if self._speed is not None and decel is not None and np.any(self._vel):
            self._speed = (self._speed[0], np.zeros(6), max(float(decel), 1e-3))
        elif self._speed is not None:
            self._speed, self._vel = None, np.zeros(6)
            self.robot.stop()

    def stop(self) -> None:
        """Stop every motion at once (the program stopped, a protective stop)."""
        self._path, self._speed, self._vel = [], None, np.zeros(6)
        self._move_end = 0.0
        self.robot.stop()

    def tick(self, dt: float) -> None:
        """Advance the controller's motion generators by one servo tick of ``dt`` s."""
        if self._path and self.robot.now() >= self._move_end:
            self._next_move()
        if self._speed is None:
            return
        kind, target, accel = self._speed
        target = target * self.speed_fraction
        diff = target - self._vel
        step = accel * dt
        biggest = float(np.max(np.abs(diff)))
        self._vel = target.copy() if biggest <= step else self._vel + diff * (step / biggest)
        if not np.any(target) and not np.any(self._vel):
            self.stop_speed()
            return
        v = self._vel
        if kind == "j":
            v = v * min(1.0, JOINT_SPEED_LIMIT / max(float(np.max(np.abs(v))), 1e-12))
        now = self.robot.now()  # the next tick's target, reached at that tick: the velocity exactly
        if kind == "j":
            self.robot.servo_joints(self.robot.commanded_joint_positions + v * dt, now + dt)
        else:
            T = self.target_tcp_T()
            T2 = np.eye(4)
            T2[:3, :3] = rotvec_to_matrix(v[3:] * dt) @ T[:3, :3]
            T2[:3, 3] = T[:3, 3] + v[:3] * dt
            self.robot.servo_tcp(*self.site_target(matrix_to_pose(T2)), now + dt)

    # -- safety -----------------------------------------------------------------------------------
    def safety_violation(self) -> str | None:
        """Why the arm must stop now (a joint at its limit, the robot pushing on the table), else None."""
        q = self.data.qpos[self.scene.arm_qpos]
        near = (q < self.limits[0] + LIMIT_MARGIN) | (q > self.limits[1] - LIMIT_MARGIN)
        if near.any():
            j = int(np.flatnonzero(near)[0])
            return f"joint {j} at {q[j]:.3f} rad, its limit"
        d = self.data
        if d.ncon == 0:
            return None
        geom = d.contact.geom  # (ncon, 2)
        table = (geom == self._table_geom).any(axis=1) & np.isin(geom, self._robot_geoms).any(axis=1)
        force = np.zeros(6)
        for i in np.flatnonzero(table):
            mujoco.mj_contactForce(self.model, d, int(i), force)
            if force[0] > self.table_force_limit:
                return f"the robot pushes on the table with {force[0]:.0f} N"
        return None

    def steady(self) -> bool:
        """``is_steady``: the joints at rest and no motion commanded."""
        return not self.moving() and self._speed is None
