import numpy as np
import pytest

from protege.data.store import EpisodeStore
from protege.data.writer import BackgroundWriter
from protege.teleop.session import record

pytest.importorskip("gym_pusht")
from protege.sim.pusht import PushTEnv  # noqa: E402


class ScriptedDevice:
    """Pushes toward the block; asks for `decisions[attempt]` at step `at` (None: let the episode end)."""

    def __init__(self, decisions=(), at=3):
        self.decisions, self.at, self.attempt = list(decisions), at, -1

    def reset(self, seed, obs, task_state=None):
        self.attempt += 1
        self.k = 0

    def act(self, obs):
        self.k += 1
        return obs["state"][2:4]

    def poll(self):
        if self.k == self.at and self.attempt < len(self.decisions):
            return self.decisions[self.attempt]
        return None


def test_records_keeps_discards_and_quits(tmp_path):
    env = PushTEnv(max_steps=6)
    writer = BackgroundWriter(tmp_path / "demo.zarr", fps=10)
    device = ScriptedDevice(decisions=[None, "discard", "keep", None, "quit"])
    report = record(env, device, writer, episodes=10, seed=7, task="pusht", keep="all", progress=False)
    writer.close()
    assert report.attempts == 5 and report.discarded == 2  # the discarded one and the quit one
    store = EpisodeStore(tmp_path / "demo.zarr")
    assert list(store.episode_lengths) == [6, 3, 6]
    meta = store.episode_meta
    assert [m["seed"] for m in meta] == [7, 9, 10] and all(m["task"] == "pusht" for m in meta)
    ep = store.episode(1)
    assert ep["img"].shape == (3, 96, 96, 3) and ep["img"].dtype == np.uint8
    np.testing.assert_allclose(ep["timestamp"], [0.0, 0.1, 0.2])
    np.testing.assert_array_equal(ep["action"][0], ep["state"][0, 2:4])
    # replaying the same seed and actions reproduces the recorded observations
    env.reset(9)
    for t in range(3):
        np.testing.assert_allclose(env.observation(["state"])["state"], ep["state"][t], atol=1e-4)
        env.step(ep["action"][t])


def test_keep_success_only_discards_failures(tmp_path):
    writer = BackgroundWriter(tmp_path / "demo.zarr")
    report = record(PushTEnv(max_steps=3), ScriptedDevice(), writer, episodes=2, keep="success", max_attempts=2, progress=False)
    writer.close()
    assert report.kept == [] and report.discarded == 2
