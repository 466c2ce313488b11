import numpy as np
import pytest

from protege.deploy.eval import wilson_interval
from protege.deploy.schedulers import RecedingHorizon


def test_receding_horizon_executes_the_first_steps_then_asks_again():
    s = RecedingHorizon(3)
    assert s.needs_chunk()
    s.add_chunk(np.arange(10.0)[:, None])
    assert [float(s.next_action()[0]) for _ in range(3)] == [0, 1, 2]
    assert s.needs_chunk()
    with pytest.raises(RuntimeError):
        s.next_action()
    with pytest.raises(ValueError):
        s.add_chunk(np.zeros((2, 1)))


def test_wilson_interval():
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_temporal_ensembling_matches_a_hand_computed_example():
    from protege.deploy.schedulers import TemporalEnsembling

    s = TemporalEnsembling(k=0.5)
    s.add_chunk([[1.0], [2.0], [3.0]])  # asked at step 0: predicts steps 0, 1, 2
    assert s.next_action()[0] == 1.0  # only one chunk covers step 0
    s.add_chunk([[10.0], [20.0], [30.0]])  # asked at step 1
    w0, w1 = 1.0, np.exp(-0.5)  # the oldest prediction weighs most
    assert s.next_action()[0] == pytest.approx((w0 * 2.0 + w1 * 10.0) / (w0 + w1))
    s.add_chunk([[100.0], [200.0], [300.0]])  # asked at step 2
    w2 = np.exp(-1.0)
    assert s.next_action()[0] == pytest.approx((w0 * 3.0 + w1 * 20.0 + w2 * 100.0) / (w0 + w1 + w2))
    assert s.next_action()[0] == pytest.approx((w0 * 30.0 + w1 * 200.0) / (w0 + w1))  # chunk 0 expired
    assert s.next_action()[0] == pytest.approx(300.0)
    with pytest.raises(RuntimeError):
        s.next_action()


def test_unknown_scheduler_name():
    from protege.deploy.schedulers import make_scheduler

    with pytest.raises(ValueError, match="temporal_ensembling"):
        make_scheduler("nope", 8)
