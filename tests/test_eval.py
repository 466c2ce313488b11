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
