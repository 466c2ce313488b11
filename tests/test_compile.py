"""Policy.compile_for_inference (the compile=true of protege-eval and protege-deploy): the compiled
policy predicts what the eager one does, is for inference only, and a failed compilation leaves
the policy as it was with a clear error."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from protege.policies.act import ACTPolicy
from protege.policies.base import CompileError
from protege.policies.diffusion import DiffusionPolicy
from protege.policies.diffusion.unet import TemporalConv1d
from protege.policies.normalizer import Normalizer
from protege.policies.onednn import onednn_matmul, probe
from protege.policies.tensors import obs_to_torch

META = {"obs": {"image": {"shape": [32, 32, 3], "type": "rgb"}, "pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [3]}}


def _norm():
    stats = {k: {"min": -np.ones(d, np.float32), "max": np.ones(d, np.float32), "mean": np.zeros(d, np.float32),
                 "std": np.ones(d, np.float32)} for k, d in (("pos", 2), ("action", 3))}
    return Normalizer(stats, ["image"])


def _diffusion():
    torch.manual_seed(0)
    return DiffusionPolicy(META, _norm(), horizon=8, n_obs_steps=2, n_action_steps=4, num_inference_steps=3,
                           unet={"down_dims": [16, 32], "diffusion_step_embed_dim": 16},
                           image_encoder={"crop_shape": [28, 28], "feature_dim": 8, "num_kp": 4, "width": 8}).eval()


def _act():
    torch.manual_seed(0)
    return ACTPolicy(META, _norm(), chunk_size=8, n_action_steps=4, hidden_dim=32, dim_feedforward=64, n_heads=4,
                     enc_layers=1, dec_layers=2, vae_enc_layers=1, dropout=0.1, backbone_width=8).eval()


def _obs(b, to, seed=1):
    """As evaluation and deployment pass them (obs_to_torch from uint8 HWC images)."""
    rng = np.random.default_rng(seed)
    return obs_to_torch({"image": rng.integers(0, 256, (b, to, 32, 32, 3), dtype=np.uint8),
                         "pos": rng.uniform(-1, 1, (b, to, 2)).astype(np.float32)}, ["image"], torch.device("cpu"))


def _same_noise(policy) -> dict:
    """predict_action's keyword arguments that make two calls draw the same noise (Diffusion Policy
    samples; ACT is deterministic)."""
    return {"generator": torch.Generator().manual_seed(0)} if isinstance(policy, DiffusionPolicy) else {}


@pytest.mark.slow
@pytest.mark.parametrize("make", [_diffusion, _act], ids=["diffusion", "act"])
def test_compiled_policy_predicts_what_the_eager_one_does_and_cannot_train(make):
    """Eager with MKL's products, compiled and run as protege-eval and protege-deploy do (under
    onednn_matmul=auto: oneDNN's products where its probe allows)."""
    policy = make()
    obs = _obs(2, policy.n_obs_steps)
    eager = policy.predict_action(obs, **_same_noise(policy))
    other = policy.predict_action(_obs(2, policy.n_obs_steps, seed=2), **_same_noise(policy))
    assert not torch.allclose(eager, other, atol=1e-3)  # the check below can tell observations apart

    with onednn_matmul("auto"):  # as the CLIs run it: compiled and run under one setting (dynamo guards on it)
        assert policy.compile_for_inference(batch_size=2) > 0
        graphs = counters["stats"]["unique_graphs"]
        assert torch.allclose(policy.predict_action(obs, **_same_noise(policy)), eager, atol=1e-4)
        assert counters["stats"]["unique_graphs"] == graphs  # compiled beforehand: the first real chunk compiles nothing
        assert torch.allclose(policy.predict_action(_obs(2, policy.n_obs_steps, seed=2), **_same_noise(policy)), other,
                              atol=1e-4)
    with pytest.raises(RuntimeError, match="compiled for inference"):
        policy.train()


@pytest.mark.slow
@pytest.mark.parametrize("make", [_diffusion, _act], ids=["diffusion", "act"])
def test_two_compiled_policies_of_one_class_each_run_their_own_weights(make):
    """The compiled code skips dynamo's guards on the modules (the weights are frozen into it);
    a second policy of the same class must not run the first one's code."""
    first, second = make(), make()
    first.autotune_gemms = second.autotune_gemms = False  # not what this test is about, and slow to compile
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.05 * torch.randn_like(p))
    obs = _obs(1, first.n_obs_steps)
    eager = [p.predict_action(obs, **_same_noise(p)) for p in (first, second)]
    assert not torch.allclose(eager[0], eager[1], atol=1e-3)
    first.compile_for_inference()
    second.compile_for_inference()
    for p, e in zip((first, second), eager):
        assert torch.allclose(p.predict_action(obs, **_same_noise(p)), e, atol=1e-4)


@pytest.mark.parametrize("make", [_diffusion, _act], ids=["diffusion", "act"])
def test_a_failed_compilation_leaves_the_eager_policy_and_says_what_to_do(make):
    import torch._inductor.config as inductor

    policy = make()
    obs = _obs(1, policy.n_obs_steps)
    eager = policy.predict_action(obs, **_same_noise(policy))
    # no C++ compiler: inductor's CPU backend cannot build its kernels (nor reuse cached ones)
    with inductor.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
        with pytest.raises(CompileError, match="C\\+\\+ compiler"):
            policy.compile_for_inference()
    torch._dynamo.reset()
    assert not set(policy.inference_methods) & set(policy.__dict__)
    assert all(m.as_matmul is None for m in policy.modules() if isinstance(m, TemporalConv1d))
    assert torch.equal(policy.predict_action(obs, **_same_noise(policy)), eager)
    policy.train()  # still trainable


def test_obs_to_torch_gives_float32_and_canonical_strides_so_compiled_guards_hold():
    """The control loop's windows get their batch axis from ``[None]`` (numpy gives it stride 0) and
    carry float64 robot states: a compiled policy warmed up on fresh arrays would recompile (for
    a minute, while the cameras go stale) at the first real chunk."""
    window = np.arange(21, dtype=np.float64).reshape(3, 7)[None]
    x = obs_to_torch({"tcp_pose": window}, [], torch.device("cpu"))["tcp_pose"]
    assert x.dtype == torch.float32 and x.stride() == torch.zeros(1, 3, 7).stride()
    assert torch.equal(x, torch.arange(21, dtype=torch.float32).reshape(1, 3, 7))
    img = obs_to_torch({"i": np.zeros((2, 8, 8, 3), np.uint8)[None]}, ["i"], torch.device("cpu"))["i"]
    assert img.stride() == obs_to_torch({"i": np.zeros((1, 2, 8, 8, 3), np.uint8)}, ["i"], torch.device("cpu"))["i"].stride()
    assert img.shape == (1, 2, 3, 8, 8) and img.is_contiguous()  # channels-first in memory, not a permuted view


@pytest.mark.slow
def test_a_compiled_policy_that_predicts_other_actions_is_refused_and_left_eager():
    """torch 2.14.1's C++ GEMM template (max-autotune on the CPU) computes a wrong product when the
    weight is a slice of a parameter, as nn.MultiheadAttention's packed in-projection makes in
    ACT: a real miscompilation, which compile_for_inference must catch before the arm moves."""
    policy = _act()
    policy.autotune_gemms = True  # what Diffusion Policy uses, and ACT must not
    obs = _obs(1, policy.n_obs_steps)
    eager = policy.predict_action(obs)
    with pytest.raises(CompileError, match="predicts other actions than the eager one"):
        policy.compile_for_inference()
    torch._dynamo.reset()
    assert not set(policy.inference_methods) & set(policy.__dict__) and policy.compiled_batch_size is None
    assert torch.equal(policy.predict_action(obs), eager)


@pytest.mark.slow
def test_a_compiled_policy_runs_its_weights_in_onednn_and_its_attention_in_mkl(capfd):
    """Under onednn_matmul (where its probe finds it exact): the weights inductor prepacked when it
    compiled run in oneDNN (its log's inner_product primitives), while the attention's products of
    two activations go to MKL once compiled (runtime_products_in_mkl): no oneDNN matmul primitive
    in the log, where the same compiled code without it logs the attention's blocks as such.
    Nothing compiles again, and the actions agree to float32 rounding."""
    if not probe().exact:
        pytest.skip(f"oneDNN's float32 products are not exact on this CPU: {probe().reason}")
    torch.manual_seed(0)  # 20 queries of 16 per head: blocks above the size PyTorch keeps out of oneDNN (16^3)
    policy = ACTPolicy(META, _norm(), chunk_size=20, n_action_steps=4, hidden_dim=64, dim_feedforward=64, n_heads=4,
                       enc_layers=1, dec_layers=1, vae_enc_layers=1, dropout=0.1, backbone_width=8).eval()
    obs = _obs(1, policy.n_obs_steps)

    def chunk_and_log(mkl: bool):
        policy.runtime_products_in_mkl = mkl
        capfd.readouterr()
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            actions = policy.predict_action(obs)
        return actions, capfd.readouterr().out

    with onednn_matmul(True):
        policy.compile_for_inference()
        graphs = counters["stats"]["unique_graphs"]
        all_onednn, without = chunk_and_log(False)
        actions, log = chunk_and_log(True)
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"  # the setting back after the chunk
    assert ",exec,cpu,matmul," in without, without[-2000:]
    assert ",exec,cpu,matmul," not in log and ",exec,cpu,inner_product," in log, log[-2000:]
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.allclose(actions, all_onednn, atol=1e-5)
