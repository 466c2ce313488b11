# Made tests/data/lerobot_v3_tiny with LeRobot 0.4.4 itself (run in its own environment):
#   python tests/data/make_lerobot_v3_tiny.py   (writes /tmp/lr/ds; copy it here)
# Two episodes (5 and 6 frames): state = frame index, action = episode index, a 32x24 camera
# whose frame t is a flat grey of 40 * t, AV1 video as LeRobot encodes by default.
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
features = {
    "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
    "action": {"dtype": "float32", "shape": (2,), "names": ["a", "b"]},
    "observation.images.cam": {"dtype": "video", "shape": (24, 32, 3), "names": ["height", "width", "channels"]},
}
ds = LeRobotDataset.create("local/test", fps=10, features=features, root="/tmp/lr/ds", robot_type="ur5e", use_videos=True)
for e in range(2):
    for t in range(5 + e):
        ds.add_frame({"observation.state": np.full(3, t, np.float32), "action": np.full(2, e, np.float32),
                      "observation.images.cam": np.full((24, 32, 3), 40 * t, np.uint8), "task": f"task {e}"})
    ds.save_episode()
ds.finalize()
print(ds.meta.info)
