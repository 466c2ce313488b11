"""The TCP-pose action layout shared by every arm backend (simulated and real).

Action (10,) float32: TCP position (3,) m in the base frame, the TCP rotation as the first two
columns of its rotation matrix (6,) (Zhou et al., "On the Continuity of Rotation Representations
in Neural Networks", CVPR 2019, section 4.2: continuous, unlike axis-angle or quaternions, which
jump for the top-down grasps of table tasks), and the gripper width (1,) m.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from .interfaces import check_array

ACTION_DIM = 10


def pose_to_action(position, quat, width: float) -> np.ndarray:
    """(10,) float32 action from TCP ``position`` (3,) m, ``quat`` (4,) (x, y, z, w), gripper ``width`` m."""
    mat = Rotation.from_quat(np.asarray(quat, float)).as_matrix()
    return np.concatenate([np.asarray(position, float), mat[:, 0], mat[:, 1], [width]]).astype(np.float32)


def action_to_pose(action) -> tuple[np.ndarray, np.ndarray, float]:
    """(position (3,) m, quat (4,) (x, y, z, w), width m) from a (10,) action.

    Raises:
        ValueError: wrong shape, NaN / inf, or degenerate rotation columns (zero or parallel).
    """
    a = check_array("action", action, (ACTION_DIM,))
    c1, c2 = a[3:6], a[6:9]
    n1 = np.linalg.norm(c1)
    if n1 < 1e-6:
        raise ValueError(f"degenerate rotation in action {a}")
    b1 = c1 / n1
    b2 = c2 - np.dot(b1, c2) * b1
    n2 = np.linalg.norm(b2)
    if n2 < 1e-6:
        raise ValueError(f"degenerate rotation in action {a}")
    b2 /= n2
    mat = np.column_stack([b1, b2, np.cross(b1, b2)])
    return a[:3].copy(), Rotation.from_matrix(mat).as_quat(), float(a[9])
