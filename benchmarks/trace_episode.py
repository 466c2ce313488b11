"""One evaluation episode step by step: the observed and commanded gripper width (m), TCP height (m)
and the cube's height (m) after the step, with the task stage; for diagnosing how a policy's grasps fail.

    python benchmarks/trace_episode.py CHECKPOINT SEED [receding_horizon|receding_horizon_blend|temporal_ensembling]

Rolls the checkpoint out with protege-eval's own evaluator (:class:`protege.deploy.eval.SimEvaluator`,
one episode of seed SEED, the named action scheduler, the eval config's defaults otherwise) and
prints one line per step from its ``on_step`` hook; ``*`` marks a step whose action comes from a
newly sampled chunk. Prints only: a diagnosis, not a figure.
"""
import sys

import torch
from hydra import compose, initialize_config_module

from protege.deploy.eval import SimEvaluator, env_config
from protege.policies.checkpoint import load_policy


def line(seed, step, obs, action, new_chunk, info, env):
    cube = env.scene.object_pose("cube")[0][2] if hasattr(env, "scene") else float("nan")
    mark = "*" if new_chunk and sched != "temporal_ensembling" else " "
    print(f"{step:3d} {mark} w={obs['gripper_width'][-1]:.3f} aw={action[-1]:.3f} z={obs['tcp_pose'][2]:.3f} "
          f"az={action[2]:.3f} cube_z={cube:.3f} {info.get('stage_name', '')}")


if len(sys.argv) < 3:
    sys.exit(__doc__)
ck, seed = sys.argv[1], int(sys.argv[2])
sched = sys.argv[3] if len(sys.argv) > 3 else "receding_horizon"
with initialize_config_module("protege.configs", version_base=None):
    cfg = compose("eval", overrides=[f"checkpoint={ck}", f"scheduler={sched}"])
policy, ckpt = load_policy(ck, use_ema=cfg.use_ema)
task = ckpt["config"]["task"]
torch.manual_seed(0)
SimEvaluator(env_config(task, cfg), task["obs"], n_episodes=1, seed=seed, scheduler=cfg.scheduler, batch_envs=1,
             fps=task.get("fps", 10), on_step=line)(policy)
