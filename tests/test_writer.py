import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from protege.data.store import EpisodeStore
from protege.data.writer import BackgroundWriter, WriterError


def _step(rng, t):
    return {"img": rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
            "state": np.full(3, t, np.float32), "timestamp": np.float64(t * 0.1)}


def test_steps_arrive_in_order_with_life_cycle(tmp_path):
    rng = np.random.default_rng(0)
    w = BackgroundWriter(tmp_path / "s.zarr", fps=10)
    sent = []
    for ep, (T, keep) in enumerate([(30, True), (5, False), (12, True)]):
        steps = [_step(rng, t) for t in range(T)]
        for s in steps:
            w.add_step(s)
        if keep:
            w.commit(task="t", success=True)
            sent.append(steps)
        else:
            w.discard()
    assert w.close() == [0, 1]
    store = EpisodeStore(tmp_path / "s.zarr")
    assert list(store.episode_lengths) == [30, 12]
    for i, steps in enumerate(sent):
        ep = store.episode(i)
        np.testing.assert_array_equal(ep["img"], np.stack([s["img"] for s in steps]))
        assert ep["timestamp"].dtype == np.float64
    assert store._array("img").shape[0] == 42  # trimmed on close


def test_writer_errors_reach_the_control_loop(tmp_path):
    w = BackgroundWriter(tmp_path / "s.zarr")
    w.add_step({"x": np.zeros(2, np.float32)})
    w.add_step({"x": np.zeros(3, np.float32)})  # wrong shape: the thread fails
    with pytest.raises(WriterError, match="differ|shape"):
        w.flush()


KILLED = textwrap.dedent("""
    import sys, numpy as np
    from protege.data.writer import BackgroundWriter
    w = BackgroundWriter(sys.argv[1], fps=10)
    rng = np.random.default_rng(0)
    for ep in range(3):
        for t in range(20 + ep):
            w.add_step({"img": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "a": np.full(2, ep, np.float32)})
        w.commit(success=True)
    w.flush()
    print("committed", flush=True)
    while True:  # a fourth episode, streaming until the process is killed
        w.add_step({"img": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "a": np.full(2, 9, np.float32)})
""")


def test_kill_9_mid_episode_keeps_every_committed_episode(tmp_path):
    path = tmp_path / "killed.zarr"
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "committed"
    import time

    time.sleep(1.0)  # let it stream part of the fourth episode to disk
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    store = EpisodeStore(path)
    assert list(store.episode_lengths) == [20, 21, 22]
    assert set(np.unique(store.read("a"))) == {0, 1, 2}
    assert store._array("a").shape[0] > 63  # the open episode's rows reached disk, uncommitted
    from protege.data.cli import main as data_cli

    assert data_cli(["repair", str(path)]) == 0
    assert EpisodeStore(path)._array("a").shape[0] == 63
