"""The action schedulers in time: stamps, late drops, blending, temporal ensembling (unit and property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protege.control.schedulers import RecedingHorizon, TemporalEnsembling, build_scheduler

DT = 0.1


def chunk(values):
    return np.asarray(values, float)[:, None]


def test_receding_horizon_executes_the_first_steps_at_their_stamps_then_asks_again():
    s = RecedingHorizon(3, dt=DT)
    assert s.needs_chunk(0.0)
    assert s.add_chunk(chunk(range(10)), t_obs=0.0, now=0.0) == 0
    # action i is the target for t_obs + (i + 1) dt; only the first n_action_steps are kept
    assert [s.action_at(t)[0] for t in (0.1, 0.2, 0.3)] == [0, 1, 2]
    assert s.action_at(0.4) is None  # the queue ran dry
    assert s.needs_chunk(0.3) and s.dropped == 0
    with pytest.raises(ValueError):
        s.add_chunk(np.zeros(3), 0.0, 0.0)


def test_needs_chunk_asks_early_by_the_lead_time():
    s = RecedingHorizon(8, dt=DT)
    s.add_chunk(chunk(range(8)), 0.0, 0.0)  # stamps 0.1 ... 0.8
    assert not s.needs_chunk(0.5, lead_s=0.0)
    assert s.needs_chunk(0.5, lead_s=0.25)  # a chunk asked now arrives at 0.75: ask now
    assert not s.needs_chunk(0.5, lead_s=0.15)


def test_late_actions_are_dropped_and_counted_never_applied_late():
    s = RecedingHorizon(4, dt=DT)
    # inference took 0.25 s: the targets for 0.1 and 0.2 have passed
    assert s.add_chunk(chunk(range(10)), t_obs=0.0, now=0.25) == 2
    assert s.dropped == 2
    assert s.action_at(0.3)[0] == 2  # the first action still on time
    # the loop overran a cycle: the action for 0.4 was never asked for and is dropped
    assert s.action_at(0.5)[0] == 4 and s.dropped == 3
    assert s.action_at(0.6)[0] == 5 and s.action_at(0.7) is None  # 4 actions from the first on time


def test_a_chunk_scheduled_after_its_cycle_s_target_time_leaves_the_older_chunk_that_target():
    """The control loop sends the target for t_k + dt in cycle k even when it schedules a chunk
    after t_k + dt (it woke late): the newer chunk replaces the older one only from its first
    action on time, so that cycle still gets the older chunk's target (a deploy run stopped as
    'policy stalled, no inference running' when the replacement left nothing for it)."""
    s = RecedingHorizon(8, dt=DT)
    s.add_chunk(chunk(range(8)), t_obs=0.0, now=0.0)  # stamps 0.1 ... 0.8
    assert s.action_at(0.1)[0] == 0 and s.action_at(0.2)[0] == 1  # cycles at t = 0 and 0.1
    # cycle at t = 0.2 schedules the chunk observed at 0.1 at 0.31: its actions for 0.2 and 0.3 are late
    assert s.add_chunk(chunk(range(10, 18)), t_obs=0.1, now=0.31) == 2
    assert s.action_at(0.3)[0] == 2  # this cycle's target: the older chunk's
    assert [s.action_at(t)[0] for t in (0.4, 0.5)] == [12, 13]  # then the newer chunk, from its first on time
    assert s.dropped == 2 and not s.needs_chunk(0.5, lead_s=0.2)
    # the older chunk's actions already asked for are not kept: only 0.4 on is scheduled
    s.add_chunk(chunk(range(20, 28)), t_obs=0.5, now=0.5)  # stamps 0.6 ...
    assert s.action_at(0.6)[0] == 20 and s.dropped == 2


def test_a_newer_chunk_takes_over_with_a_blend():
    s = RecedingHorizon(8, dt=DT, blend_steps=2)
    s.add_chunk(chunk([0] * 8), 0.0, 0.0)
    assert s.action_at(0.1)[0] == 0 and s.action_at(0.2)[0] == 0
    s.add_chunk(chunk([9] * 8), t_obs=0.2, now=0.2)  # stamps 0.3 ...
    got = [s.action_at(t)[0] for t in (0.3, 0.4, 0.5, 0.6)]
    assert got == pytest.approx([3.0, 6.0, 9.0, 9.0])  # 1/3, 2/3 of the way, then the new chunk alone
    plain = RecedingHorizon(8, dt=DT)
    plain.add_chunk(chunk([0] * 8), 0.0, 0.0)
    plain.add_chunk(chunk([9] * 8), 0.2, 0.2)
    assert plain.action_at(0.3)[0] == 9.0


def test_temporal_ensembling_matches_a_hand_computed_example():
    s = TemporalEnsembling(k=0.5, dt=DT)
    s.add_chunk(chunk([1, 2, 3]), 0.0, 0.0)  # predicts 0.1, 0.2, 0.3
    assert s.action_at(0.1)[0] == 1.0
    s.add_chunk(chunk([10, 20, 30]), 0.1, 0.1)  # predicts 0.2, 0.3, 0.4
    w0, w1, w2 = 1.0, np.exp(-0.5), np.exp(-1.0)  # the oldest prediction weighs most
    assert s.action_at(0.2)[0] == pytest.approx((w0 * 2 + w1 * 10) / (w0 + w1))
    s.add_chunk(chunk([100, 200, 300]), 0.2, 0.2)
    assert s.action_at(0.3)[0] == pytest.approx((w0 * 3 + w1 * 20 + w2 * 100) / (w0 + w1 + w2))
    assert s.action_at(0.4)[0] == pytest.approx((w0 * 30 + w1 * 200) / (w0 + w1))  # chunk 0 expired
    assert s.action_at(0.5)[0] == pytest.approx(300.0)
    assert s.action_at(0.6) is None


def test_the_scheduler_config_group_builds_each_scheduler():
    """Every file of configs/scheduler/ composes and builds; n_action_steps: null is the policy's."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("protege.configs", version_base=None):
        rh = compose("deploy", overrides=["checkpoint=x"]).scheduler
        plain = compose("eval", overrides=["checkpoint=x"]).scheduler
        te = compose("eval", overrides=["checkpoint=x", "scheduler=temporal_ensembling", "scheduler.k=0.5"]).scheduler
        ta4 = compose("eval", overrides=["checkpoint=x", "scheduler.n_action_steps=4"]).scheduler
    s = build_scheduler(rh, 8, dt=DT, offset=0.0)
    assert isinstance(s, RecedingHorizon) and (s.n_action_steps, s.blend_steps, s.dt, s.offset) == (8, 2, DT, 0.0)
    s = build_scheduler(plain, 8)
    assert isinstance(s, RecedingHorizon) and (s.n_action_steps, s.blend_steps) == (8, 0)
    assert build_scheduler(ta4, 8).n_action_steps == 4
    s = build_scheduler(te, 8)
    assert isinstance(s, TemporalEnsembling) and s.k == 0.5 and s.name == "temporal_ensembling"
    with pytest.raises(ValueError, match="k must be >= 0"):
        build_scheduler({**te, "k": -1}, 8)


@settings(max_examples=60, deadline=None)
@given(n_act=st.integers(1, 8), ta=st.integers(8, 16), latency_steps=st.floats(0.0, 6.0),
       blend=st.integers(0, 3), n_cycles=st.integers(5, 60), late_steps=st.floats(0.0, 1.5), margin_steps=st.floats(0.0, 3.0))


def test_receding_horizon_in_a_simulated_loop(n_act, ta, latency_steps, blend, n_cycles, late_steps, margin_steps):
    """Every action executed is exactly a chunk's prediction for that instant (blends of equal
    values agree), each instant once; a chunk scheduled late in its cycle (late_steps periods after
    the cycle's start, as a loop that woke late does) never takes away the cycle's own target."""
    s = RecedingHorizon(n_act, dt=DT, blend_steps=blend)
    latency = latency_steps * DT
    pending = None  # (arrival time, t_obs)
    executed = []
    for k in range(n_cycles):
        t = k * DT
        if pending is not None and pending[0] <= t:
            arrival, t_obs = pending
            # the chunk predicts the value t_obs + (i + 1) dt at index i: the action equals its own stamp
            had = s.peek(t + DT) is not None
            n = s.add_chunk(np.arange(1, ta + 1)[:, None] * DT + t_obs, t_obs, max(arrival, t + late_steps * DT))
            assert 0 <= n <= ta
            assert s.peek(t + DT) is not None or not had
            pending = None
        if pending is None and s.needs_chunk(t, latency + margin_steps * DT):  # the loop's lead: latency + margin
            pending = (t + latency, t)
        a = s.action_at(t + DT)
        if a is not None:
            executed.append((t + DT, a[0]))
    for stamp, value in executed:
        assert value == pytest.approx(stamp)  # right action at the right time (blends of equal values agree)
    stamps = [e[0] for e in executed]
    assert stamps == sorted(set(stamps))


@settings(max_examples=60, deadline=None)
@given(k=st.floats(0.0, 2.0), ta=st.integers(1, 10), n_cycles=st.integers(1, 30))


def test_temporal_ensembling_is_a_convex_combination(k, ta, n_cycles):
    rng = np.random.default_rng(0)
    s = TemporalEnsembling(k=k, dt=DT)
    preds: dict[int, list[float]] = {}
    for c in range(n_cycles):
        ch = rng.normal(size=(ta, 1))
        s.add_chunk(ch, c * DT, c * DT)
        for i in range(ta):
            preds.setdefault(c + i + 1, []).append(ch[i, 0])
        a = s.action_at((c + 1) * DT)
        vals = preds[c + 1]
        assert min(vals) - 1e-9 <= a[0] <= max(vals) + 1e-9
