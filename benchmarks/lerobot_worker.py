"""LeRobot's side of ``vs_lerobot.py``: run in LeRobot's own virtual environment (it imports
``lerobot``; of protege it loads only ``protege/policies/onednn.py`` and ``malloc.py`` by their
paths, which import nothing but torch and the standard library). Reads one case as JSON from
argv[1], builds LeRobot's DiffusionPolicy or ACTPolicy at those sizes and prints one JSON line
(``params_M``, ``torch``). Then it answers commands, one per line on stdin, each with one JSON
line ``{"s": seconds}``: ``train`` (one training step: forward + backward + AdamW step on random
tensors of the case's shapes), ``chunk`` (one action chunk at batch 1, eager), ``compile`` (compile
the per-chunk networks as protege compiles its own, with the same oneDNN setting, and predict the
first chunk) and ``chunk_compiled`` (for ACT then with the attention's products in MKL, as
protege runs its compiled ACT); ``quit`` ends it. So ``vs_lerobot.py`` can interleave LeRobot's
repetitions with its own one by one. With ``case["tuned"]`` the process trains with protege's
CPU settings for its whole life: float32 products in oneDNN (when ``case["onednn"]``: what
protege's ``onednn_matmul=auto`` chose on this machine), glibc keeping freed memory
(``train.keep_freed_memory``) and PyTorch's fused AdamW (protege's ``train.adamw``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path

import torch

from worker_protocol import serve  # benchmarks/worker_protocol.py


def frozen_compile(fn, autotune_gemms: bool):
    """torch.compile(fn), compiled with inductor's freezing and C++ wrapper on and, for Diffusion
    Policy, max-autotune of its matrix products against inductor's C++ GEMM template (as
    protege's Policy.compile_for_inference does: the config is patched around each call)."""
    import torch._inductor.config as inductor

    compiled = torch.compile(fn)
    autotune = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",  # and no timing tables on stderr
                "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False} if autotune_gemms else {}

    def call(*args, **kwargs):
        with inductor.patch(freezing=True, cpp_wrapper=True, layout_optimization=False, **autotune):
            return compiled(*args, **kwargs)

    return call


def protege_module(name: str):
    """``protege/policies/<name>.py`` loaded by its path, without the protege package (not
    installed in LeRobot's venv): onednn.py and malloc.py import only torch and the standard
    library."""
    path = Path(__file__).resolve().parents[1] / "protege" / "policies" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"protege_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


onednn_module, malloc = protege_module("onednn"), protege_module("malloc")


def onednn(on: bool):
    """Float32 products in oneDNN within the block when ``on`` (protege's ``onednn_matmul``, which
    vs_lerobot.py found exact and faster here)."""
    return onednn_module._onednn_products() if on else contextlib.nullcontext()


def runtime_products_in_mkl(on: bool):
    """Within ``onednn(True)``, a compiled ACT chunk's attention products in MKL, its prepacked
    weights staying in oneDNN, as protege's compiled ACT runs after its first call."""
    return onednn_module.runtime_products_in_mkl() if on else contextlib.nullcontext()


def main() -> None:
    case = json.loads(sys.argv[1])
    torch.manual_seed(0)
    torch.set_num_threads(case["threads"])
    from lerobot.configs.types import FeatureType, PolicyFeature

    s, b = case["image_size"], case["batch_size"]
    inputs = {"observation.image": PolicyFeature(type=FeatureType.VISUAL, shape=(3, s, s)),
              "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(case["state_dim"],))}
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(case["action_dim"],))}
    if case["policy"] == "diffusion":
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

        cfg = DiffusionConfig(input_features=inputs, output_features=outputs, n_obs_steps=case["n_obs_steps"],
                              horizon=case["horizon"], n_action_steps=case["n_action_steps"],
                              crop_shape=tuple(case["crop_shape"]), down_dims=tuple(case["down_dims"]),
                              diffusion_step_embed_dim=case["diffusion_step_embed_dim"], kernel_size=case["kernel_size"],
                              n_groups=case["n_groups"], spatial_softmax_num_keypoints=case["num_kp"],
                              use_group_norm=True, pretrained_backbone_weights=None, noise_scheduler_type="DDIM",
                              num_inference_steps=case["num_inference_steps"], device="cpu")
        policy = DiffusionPolicy(cfg)
        to, h = case["n_obs_steps"], case["horizon"]
        batch = {"observation.image": torch.rand(b, to, 3, s, s) * 2 - 1, "observation.state": torch.randn(b, to, case["state_dim"]),
                 "action": torch.rand(b, h, case["action_dim"]) * 2 - 1, "action_is_pad": torch.zeros(b, h, dtype=torch.bool)}
        one = {"observation.state": torch.randn(1, to, case["state_dim"]),
               "observation.images": torch.rand(1, to, 1, 3, s, s) * 2 - 1}

        def infer():
            policy.eval()
            with torch.no_grad():
                return policy.diffusion.generate_actions(one)
    else:
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy

        cfg = ACTConfig(input_features=inputs, output_features=outputs, chunk_size=case["chunk_size"],
                        n_action_steps=case["n_action_steps"], dim_model=case["hidden_dim"], n_heads=case["n_heads"],
                        dim_feedforward=case["dim_feedforward"], n_encoder_layers=case["enc_layers"],
                        n_decoder_layers=case["dec_layers"], n_vae_encoder_layers=case["vae_enc_layers"],
                        latent_dim=case["latent_dim"], dropout=case["dropout"], kl_weight=case["kl_weight"],
                        pretrained_backbone_weights=None, device="cpu")
        policy = ACTPolicy(cfg)
        k = case["chunk_size"]
        batch = {"observation.image": torch.rand(b, 3, s, s), "observation.state": torch.randn(b, case["state_dim"]),
                 "action": torch.rand(b, k, case["action_dim"]) * 2 - 1, "action_is_pad": torch.zeros(b, k, dtype=torch.bool)}
        one = {"observation.image": torch.rand(1, 3, s, s), "observation.state": torch.randn(1, case["state_dim"])}

        def infer():
            policy.eval()
            with torch.no_grad():
                return policy.predict_action_chunk(one)

    tuned = case.get("tuned", False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=True if tuned else None)

    def step():
        policy.train()
        loss, _ = policy.forward(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    compiled: list = []  # (object, attribute, compiled function)

    def compile_chunk():
        """Compile, then check the compiled chunk against the eager one from the same noise (as
        protege's compile_for_inference checks its own)."""
        torch.manual_seed(0)
        expected = infer()
        with onednn(case["onednn"]):
            _compile()
        torch.manual_seed(0)
        error = (chunk_compiled() - expected).abs().max().item()
        if not error <= 1e-3 * max(1.0, expected.abs().max().item()):
            raise SystemExit(f"LeRobot's compiled chunk differs from its eager one by {error:.3g}")

    def _compile():
        if case["policy"] == "diffusion":
            d = policy.diffusion
            compiled.extend([(d.unet, "forward", frozen_compile(d.unet.forward, True)),
                             (d, "_prepare_global_conditioning", frozen_compile(d._prepare_global_conditioning, True))])
        else:
            compiled.append((policy.model, "forward", frozen_compile(policy.model.forward, False)))
        infer_compiled()  # compiles here, under the setting

    def chunk_compiled():
        with onednn(case["onednn"]), runtime_products_in_mkl(case["onednn"] and case["policy"] == "act"):
            return infer_compiled()

    def infer_compiled():
        for obj, name, fn in compiled:
            setattr(obj, name, fn)
        try:
            return infer()
        finally:  # eager again for the next "chunk": LeRobot as it ships
            for obj, name, _ in compiled:
                vars(obj).pop(name)

    commands = {"train": step, "chunk": infer, "compile": compile_chunk, "chunk_compiled": chunk_compiled}
    if not tuned:
        serve(policy, commands)
        return
    with onednn(case["onednn"]), malloc.keep_freed_memory() as kept:
        serve(policy, commands, {"tuned": {"onednn": case["onednn"], "keep_freed_memory": kept, "fused_adamw": True}})


if __name__ == "__main__":
    main()
