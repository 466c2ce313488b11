"""One evaluation episode step by step: the observed and commanded gripper width (m), TCP height (m)
and the cube's height (m), with the task stage; for diagnosing how a policy's grasps fail.

    python benchmarks/trace_episode.py CHECKPOINT SEED [receding_horizon|temporal_ensembling]

Rolls out the checkpoint in the task's lockstep simulator as protege-eval does (seed, n_obs_steps
history, the named action scheduler; ``*`` marks a step where a receding-horizon chunk starts) and
prints one line per step. Prints only: a diagnosis, not a figure.
"""
import sys
from collections import deque
import hydra, numpy as np, torch
from hydra import compose, initialize_config_module
from protege.deploy.eval import env_config
from protege.data.dataset import obs_from_step
from protege.policies.checkpoint import load_policy
from protege.policies.tensors import obs_to_torch
from protege.deploy.schedulers import make_scheduler

if len(sys.argv) < 3:
    sys.exit(__doc__)
ck, seed = sys.argv[1], int(sys.argv[2])
sched = sys.argv[3] if len(sys.argv) > 3 else "receding_horizon"
policy, ckpt = load_policy(ck)
task = ckpt["config"]["task"]
with initialize_config_module("protege.configs", version_base=None):
    cfg = compose("eval", overrides=[f"checkpoint={ck}"])
env = hydra.utils.instantiate(env_config(task, cfg))
env.reset(seed)
keys = list({s["source"] for s in task["obs"].values()})
spec = task["obs"]; imk = [k for k, s in spec.items() if s.get("type") == "rgb"]
h = deque([obs_from_step(env.observation(keys), spec)] * policy.n_obs_steps, maxlen=policy.n_obs_steps)
sc = make_scheduler(sched, policy.n_action_steps, 0.01, dt=0.1)
torch.manual_seed(0); policy.reset()
for k in range(100):
    t = k * 0.1
    new = sc.needs_chunk(t)
    if new:
        obs = {key: np.stack([np.stack([x[key] for x in h])]) for key in spec}
        with torch.no_grad():
            chunk = policy.predict_action(obs_to_torch(obs, imk, policy.device)).float().numpy()[0]
        sc.add_chunk(chunk, t_obs=t, now=t)
    a = sc.action_at((k + 1) * 0.1)
    o = h[-1]
    cube = env.scene.object_pose("cube")[0] if hasattr(env, "scene") else None
    r, done, info = env.step(a)
    print(f"{k:3d} {'*' if new and sched!='temporal_ensembling' else ' '} w={o['gripper_width'][0]:.3f} aw={a[-1]:.3f} z={o['tcp_pose'][2]:.3f} az={a[2]:.3f} cube_z={cube[2] if cube is not None else float('nan'):.3f} {info['stage_name']}")
    if done: break
    h.append(obs_from_step(env.observation(keys), spec))
