import pytest

from protege.deploy.eval import wilson_interval


def test_wilson_interval():
    lo, hi = wilson_interval(45, 50)
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


# -- the evaluator's aggregation on a tiny fake environment with known answers ----------------------

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protege.deploy.eval import SimEvaluator  # noqa: E402


def test_a_bad_scheduler_config_is_refused_before_any_rollout():
    with pytest.raises(ValueError, match="n_action_steps must be >= 1"):
        SimEvaluator({"_target_": "x"}, {}, scheduler={"_target_": "protege.control.schedulers.RecedingHorizon",
                                                       "n_action_steps": 0})
    with pytest.raises(ValueError, match="not an action scheduler"):
        SimEvaluator({"_target_": "x"}, {}, scheduler={"_target_": "collections.OrderedDict"})

# seed -> (rewards per step, the step (0-based) whose info says success or None, the episode's length)
SCRIPT = {0: ([0.1, 0.7, 0.2, 0.0], 1, 4), 1: ([0.0, 0.0, 0.3], None, 3), 2: ([0.5, 0.9, 0.95, 0.4, 0.2, 0.1], 2, 6)}
LOG: dict[int, dict] = {}


class FakeEnv:
    """Observation x = 100 * seed + the step count; rewards, success and done follow SCRIPT."""

    def reset(self, seed):
        self.seed, self.k = seed, 0
        LOG[seed] = {"actions": [], "steps_after_done": 0}

    def observation(self, keys):
        return {"x": np.array([100.0 * self.seed + self.k], np.float32)}

    def step(self, action):
        rewards, success_at, length = SCRIPT[self.seed]
        if self.k >= length:
            LOG[self.seed]["steps_after_done"] += 1
        LOG[self.seed]["actions"].append(float(action[0]))
        reward, self.k = rewards[min(self.k, length - 1)], self.k + 1
        return reward, self.k >= length, {"success": success_at == self.k - 1, "coverage": reward / 2}

    def render(self):
        return np.zeros((8, 8, 3), np.uint8)

    def close(self):
        pass


class EchoPolicy:
    """Chunk action i = the newest observation's x + i / 10; remembers every window it was given."""

    n_obs_steps, n_action_steps, num_inference_steps, device = 2, 2, None, torch.device("cpu")
    compiled_batch_size = None  # eager

    def __init__(self):
        self.windows = []

    def reset(self):
        pass

    def predict_action(self, obs):
        x = obs["x"].numpy()  # (B, To, 1)
        self.windows += [w[:, 0].tolist() for w in x]
        return torch.from_numpy(x[:, -1:, :] + np.arange(4)[None, :, None] / 10)


def test_evaluator_aggregates_max_reward_success_and_done_per_episode():
    policy = EchoPolicy()
    ev = SimEvaluator({"_target_": "test_eval.FakeEnv"}, {"x": {"source": "x", "type": "low_dim"}}, n_episodes=3, seed=0,
                      batch_envs=2)
    report = ev(policy)
    eps = {e["seed"]: e for e in report["episodes"]}
    assert {s: (e["max_reward"], e["success"], e["steps"]) for s, e in eps.items()} == {
        0: (0.7, True, 4), 1: (0.3, False, 3), 2: (0.95, True, 6)}
    assert eps[2]["max_coverage"] == pytest.approx(0.475)  # the max over the episode, not the last step's
    assert report["mean_max_reward"] == pytest.approx((0.7 + 0.3 + 0.95) / 3)
    assert report["success_rate"] == pytest.approx(2 / 3) and report["n_episodes"] == 3
    assert all(LOG[s]["steps_after_done"] == 0 for s in SCRIPT)  # a finished episode is never stepped again
    # observation history at reset: the first observation repeated n_obs_steps times (training's edge padding)
    assert [0.0, 0.0] in policy.windows and [100.0, 100.0] in policy.windows and [200.0, 200.0] in policy.windows
    # receding horizon, 2 actions per chunk: steps 0, 1 from the chunk at x = 0 (+0.0, +0.1), then a
    # new chunk observed at step 2 (x = 2, its window [1, 2])
    assert LOG[2]["actions"] == pytest.approx([200.0, 200.1, 202.0, 202.1, 204.0, 204.1])
    assert [201.0, 202.0] in policy.windows


def test_on_step_sees_every_step_with_its_observation_action_and_chunk_boundary():
    calls = []
    ev = SimEvaluator({"_target_": "test_eval.FakeEnv"}, {"x": {"source": "x", "type": "low_dim"}}, n_episodes=3, seed=0,
                      batch_envs=2, on_step=lambda **kw: calls.append(kw))
    ev(EchoPolicy())
    seed2 = [c for c in calls if c["seed"] == 2]
    assert [c["step"] for c in seed2] == list(range(6))  # once per step, in order, none after done
    assert [float(c["obs"]["x"][0]) for c in seed2] == [200.0, 201.0, 202.0, 203.0, 204.0, 205.0]  # before the step
    assert [float(c["action"][0]) for c in seed2] == pytest.approx([200.0, 200.1, 202.0, 202.1, 204.0, 204.1])
    assert [c["new_chunk"] for c in seed2] == [True, False] * 3  # receding horizon, 2 actions per chunk
    assert len(calls) == 4 + 3 + 6 and all("success" in c["info"] for c in calls)


def test_a_compiled_policy_always_gets_its_batch_size_and_the_padding_is_dropped():
    class Compiled(EchoPolicy):
        compiled_batch_size = 3

        def predict_action(self, obs):
            self.sizes = getattr(self, "sizes", []) + [obs["x"].shape[0]]
            return super().predict_action(obs)

    spec = {"x": {"source": "x", "type": "low_dim"}}
    plain = SimEvaluator({"_target_": "test_eval.FakeEnv"}, spec, n_episodes=3, seed=0, batch_envs=3)(EchoPolicy())
    actions = {s: list(LOG[s]["actions"]) for s in SCRIPT}
    policy = Compiled()
    padded = SimEvaluator({"_target_": "test_eval.FakeEnv"}, spec, n_episodes=3, seed=0, batch_envs=3)(policy)
    assert set(policy.sizes) == {3} and len(policy.sizes) == 3  # episodes end at steps 3, 4, 6: batches of 3, 2, 1
    assert {s: LOG[s]["actions"] for s in SCRIPT} == actions
    assert padded["episodes"] == plain["episodes"]


def test_the_report_says_how_much_of_the_time_the_policy_took():
    import time

    class Slow(EchoPolicy):
        def predict_action(self, obs):
            self.calls = getattr(self, "calls", 0) + 1
            time.sleep(0.05)
            return super().predict_action(obs)

    policy = Slow()
    report = SimEvaluator({"_target_": "test_eval.FakeEnv"}, {"x": {"source": "x", "type": "low_dim"}}, n_episodes=3,
                          seed=0, batch_envs=3)(policy)
    # every call counted (a timer around one call only, or none, fails), and it is a part of the whole
    assert policy.calls * 0.05 <= report["inference_seconds"] <= report["eval_seconds"]


# seed -> the stage each step reports (a lift-like task: seed 1 grasps, drops the cube and ends at "reached")
STAGES = {0: ["start", "reached", "grasped", "lifted"], 1: ["reached", "grasped", "reached"],
          2: ["start", "start", "reached", "reached", "reached", "reached"]}


class StagedEnv(FakeEnv):
    """FakeEnv whose info also names the stage (as protege.sim.env.SimEnv does); seed 0 succeeds."""

    def step(self, action):
        reward, done, info = super().step(action)
        info["stage_name"] = STAGES[self.seed][self.k - 1]
        info["success"] = self.seed == 0 and self.k == 4
        return reward, done, info


def test_evaluator_records_when_each_stage_was_reached_and_where_episodes_ended():
    ev = SimEvaluator({"_target_": "test_eval.StagedEnv"}, {"x": {"source": "x", "type": "low_dim"}}, n_episodes=3,
                      seed=0, batch_envs=3)
    report = ev(EchoPolicy())
    eps = {e["seed"]: e for e in report["episodes"]}
    assert eps[0]["stage_first_step"] == {"start": 1, "reached": 2, "grasped": 3, "lifted": 4}
    assert eps[1]["stage_first_step"] == {"reached": 1, "grasped": 2} and eps[1]["final_stage"] == "reached"
    assert eps[2]["final_stage"] == "reached"
    assert report["final_stages"] == {"success": 1, "reached": 2}
    # tasks without stages (PushT) report none
    assert SimEvaluator({"_target_": "test_eval.FakeEnv"}, {"x": {"source": "x", "type": "low_dim"}}, n_episodes=1,
                        seed=0)(EchoPolicy())["final_stages"] is None


def test_failed_videos_film_only_the_failures(tmp_path):
    ev = SimEvaluator({"_target_": "test_eval.StagedEnv"}, {"x": {"source": "x", "type": "low_dim"}}, n_episodes=3,
                      seed=0, batch_envs=2, n_videos=5, video_dir=str(tmp_path), videos="failed")
    report = ev(EchoPolicy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_001_seed1_reached.mp4", "episode_002_seed2_reached.mp4"]
    assert [("video" in e) for e in report["episodes"]] == [False, True, True]
    one = tmp_path / "one"  # at most n_videos of them, across batches
    SimEvaluator({"_target_": "test_eval.StagedEnv"}, {"x": {"source": "x", "type": "low_dim"}}, n_episodes=3, seed=0,
                 batch_envs=2, n_videos=1, video_dir=str(one), videos="failed")(EchoPolicy())
    assert [p.name for p in one.iterdir()] == ["episode_001_seed1_reached.mp4"]
    with pytest.raises(ValueError, match="videos"):
        SimEvaluator({"_target_": "test_eval.StagedEnv"}, {}, videos="best")
