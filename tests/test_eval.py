import pytest

from protege.deploy.eval import wilson_interval


def test_wilson_interval():
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_unknown_scheduler_name():
    from protege.deploy.schedulers import make_scheduler

    with pytest.raises(ValueError, match="temporal_ensembling"):
        make_scheduler("nope", 8)
