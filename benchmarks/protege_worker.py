"""Our side of ``vs_lerobot.py``, the mirror of ``lerobot_worker.py``: run with protege's python.
Reads one case as JSON from argv[1], builds our DiffusionPolicy or ACTPolicy at those sizes and
prints one JSON line (``params_M``, ``torch``). Then it answers the same commands, one per line on
stdin, each with one JSON line ``{"s": seconds}``: ``train`` (forward + backward + AdamW step on
random tensors of the case's shapes), ``chunk`` (one action chunk at batch 1, eager), ``compile``
(``Policy.compile_for_inference``, the ``compile=true`` of protege-eval and protege-deploy, which
predicts its first chunk as part of it) and ``chunk_compiled``; ``quit`` ends it. All of it with
float32 products in oneDNN when ``case["onednn"]`` (what ``onednn_matmul=auto`` chose); a
process of the training phase (``case["phase"] == "train"``) also steps as protege-train does,
with glibc keeping freed memory (``train.keep_freed_memory``) and the trainer's fused AdamW.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from worker_protocol import serve  # benchmarks/worker_protocol.py


def build_ours(case: dict) -> tuple[torch.nn.Module, dict, dict]:
    """Our policy at the case's sizes, a training batch and a batch-1 observation of random tensors
    of its shapes (see vs_lerobot.py's docstring): (policy, batch, one)."""
    from protege.policies.act import ACTPolicy
    from protege.policies.diffusion import DiffusionPolicy
    from protege.policies.normalizer import Normalizer
    from protege.policies.tensors import obs_to_torch

    torch.manual_seed(0)
    s, b, da, ds = case["image_size"], case["batch_size"], case["action_dim"], case["state_dim"]
    meta = {"obs": {"image": {"shape": [s, s, 3], "type": "rgb"}, "agent_pos": {"shape": [ds], "type": "low_dim"}},
            "action": {"shape": [da]}}
    stats = {k: {"min": -torch.ones(d).numpy(), "max": torch.ones(d).numpy(), "mean": torch.zeros(d).numpy(),
                 "std": torch.ones(d).numpy()} for k, d in (("agent_pos", ds), ("action", da))}
    norm = Normalizer(stats, ["image"])
    if case["policy"] == "diffusion":
        policy = DiffusionPolicy(meta, norm, horizon=case["horizon"], n_obs_steps=case["n_obs_steps"],
                                 n_action_steps=case["n_action_steps"], num_inference_steps=case["num_inference_steps"],
                                 unet={"down_dims": case["down_dims"], "diffusion_step_embed_dim": case["diffusion_step_embed_dim"],
                                       "kernel_size": case["kernel_size"], "n_groups": case["n_groups"]},
                                 image_encoder={"crop_shape": case["crop_shape"], "feature_dim": 2 * case["num_kp"],
                                                "num_kp": case["num_kp"], "width": 64})
        to, h = case["n_obs_steps"], case["horizon"]
    else:  # frozen BatchNorm as LeRobot's ACT has it (the weights themselves are not loaded: same compute)
        policy = ACTPolicy(meta, norm, chunk_size=case["chunk_size"], n_action_steps=case["n_action_steps"],
                           kl_weight=case["kl_weight"], latent_dim=case["latent_dim"], hidden_dim=case["hidden_dim"],
                           dim_feedforward=case["dim_feedforward"], n_heads=case["n_heads"], enc_layers=case["enc_layers"],
                           dec_layers=case["dec_layers"], vae_enc_layers=case["vae_enc_layers"], dropout=case["dropout"],
                           backbone_width=64, pretrained_backbone="imagenet")
        to, h = 1, case["chunk_size"]
    batch = {"obs": {"image": torch.rand(b, to, 3, s, s), "agent_pos": torch.randn(b, to, ds)},
             "action": torch.rand(b, h, da) * 2 - 1, "mask": torch.ones(b, h, dtype=torch.bool)}
    # the observation as protege-eval and protege-deploy pass it (uint8 camera frames made float by
    # obs_to_torch), so the compiled policy runs on the layout it was compiled for
    one = obs_to_torch({"image": np.random.default_rng(0).integers(0, 256, (1, to, s, s, 3), dtype=np.uint8),
                        "agent_pos": np.random.default_rng(1).standard_normal((1, to, ds)).astype(np.float32)},
                       ["image"], torch.device("cpu"))
    return policy, batch, one


def main() -> None:
    from protege.policies import malloc
    from protege.policies.onednn import onednn_matmul
    from protege.policies.train import adamw

    case = json.loads(sys.argv[1])
    torch.set_num_threads(case["threads"])
    policy, batch, one = build_ours(case)
    opt = adamw(policy.parameters(), torch.device("cpu"), lr=1e-4)

    def step():
        policy.train()
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def chunk():
        policy.eval()
        policy.predict_action(one)  # no_grad by its decorator

    # float32 products as protege-train, -eval and -deploy run them (onednn_matmul=auto, whose
    # probe vs_lerobot.py ran: case["onednn"]); memory as protege-train keeps it
    with onednn_matmul(case["onednn"]) as on, malloc.keep_freed_memory(case.get("phase") == "train") as kept:
        serve(policy, {"train": step, "chunk": chunk, "compile": policy.compile_for_inference, "chunk_compiled": chunk},
              {"onednn_matmul": on, "keep_freed_memory": kept})


if __name__ == "__main__":
    main()
