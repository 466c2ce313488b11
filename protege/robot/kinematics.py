"""Forward kinematics of Universal Robots arms from their Denavit-Hartenberg parameters.

Universal Robots publishes each model's nominal DH parameters ("DH parameters for calculations of
kinematics and dynamics", universal-robots.com); a real controller adds its own per-arm
calibration (a few tenths of a mm), so this is the nominal arm: good for the safety filter's
workspace box around joint targets, not for metrology.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

# (d, a, alpha) per joint, m / m / rad
UR_DH = {
    "ur5e": ((0.1625, 0.0, np.pi / 2), (0.0, -0.425, 0.0), (0.0, -0.3922, 0.0),
             (0.1333, 0.0, np.pi / 2), (0.0997, 0.0, -np.pi / 2), (0.0996, 0.0, 0.0)),
    "ur3e": ((0.15185, 0.0, np.pi / 2), (0.0, -0.24355, 0.0), (0.0, -0.2132, 0.0),
             (0.13105, 0.0, np.pi / 2), (0.08535, 0.0, -np.pi / 2), (0.0921, 0.0, 0.0)),
    "ur10e": ((0.1807, 0.0, np.pi / 2), (0.0, -0.6127, 0.0), (0.0, -0.57155, 0.0),
              (0.17415, 0.0, np.pi / 2), (0.11985, 0.0, -np.pi / 2), (0.11655, 0.0, 0.0)),
}


def ur_flange(q, model: str = "ur5e") -> np.ndarray:
    """(4, 4) the flange (tool0) in the controller's base frame at joints ``q`` (6,) rad. (The DH
    chain starts in ``base_link``; the controller's base frame, in which it reports and takes
    poses, is that turned by pi about z.)

    Raises:
        KeyError: a model without parameters here (ur3e, ur5e, ur10e).
    """
    T = np.diag([-1.0, -1.0, 1.0, 1.0])
    for qi, (d, a, alpha) in zip(np.asarray(q, float), UR_DH[model]):
        ct, st, ca, sa = np.cos(qi), np.sin(qi), np.cos(alpha), np.sin(alpha)
        T = T @ np.array([[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st], [0, sa, ca, d], [0, 0, 0, 1]])
    return T


def ur_tcp_pose(q, tcp_offset=(0, 0, 0, 0, 0, 0), model: str = "ur5e") -> tuple[np.ndarray, np.ndarray]:
    """The TCP (flange + ``tcp_offset`` [x, y, z, rx, ry, rz], m / rotation vector rad, as ``setTcp``
    takes it) at joints ``q`` (6,) rad: position (3,) m and quaternion (4,) (x, y, z, w), base frame."""
    off = np.eye(4)
    off[:3, :3] = Rotation.from_rotvec(np.asarray(tcp_offset, float)[3:6]).as_matrix()
    off[:3, 3] = np.asarray(tcp_offset, float)[:3]
    T = ur_flange(q, model) @ off
    return T[:3, 3].copy(), Rotation.from_matrix(T[:3, :3]).as_quat()
