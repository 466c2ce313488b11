import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protege.data.dataset import load_task_data
from protege.policies.normalizer import Normalizer
from protege.policies.checkpoint import CheckpointError, load_policy, read_checkpoint, save_checkpoint
from protege.policies.diffusion import DiffusionPolicy
from protege.policies.diffusion.unet import ConditionalUnet1D, TemporalConv1d
from protege.policies.encoders import ObsEncoder, SpatialSoftmax, crop
from protege.policies.tensors import to_torch

STATE_SPEC = {"agent_pos": {"source": "state", "slice": [0, 2]}, "keypoint": {"source": "keypoint"}}
SMALL = dict(unet={"down_dims": [32, 64, 128], "diffusion_step_embed_dim": 32})


@pytest.mark.parametrize("down_dims", [[32], [32, 64], [16, 32, 64]])
def test_unet_keeps_the_action_sequence_shape(down_dims):
    net = ConditionalUnet1D(input_dim=2, global_cond_dim=10, down_dims=down_dims, diffusion_step_embed_dim=16)
    x = torch.randn(3, 16, 2)
    out = net(x, torch.tensor([0, 5, 99]), torch.randn(3, 10))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        ConditionalUnet1D(2, 10, down_dims=[8, 16, 32])(torch.randn(1, 6, 2), torch.tensor([1]), torch.randn(1, 10))


@pytest.mark.parametrize("cin,cout,k,stride,pad", [(3, 5, 5, 1, 2), (4, 4, 3, 2, 1), (6, 2, 1, 1, 0), (2, 3, 4, 2, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_as_matmul_computes_the_convolution(cin, cout, k, stride, pad, batch):
    torch.manual_seed(0)
    conv = TemporalConv1d(cin, cout, k, stride=stride, padding=pad)
    x = torch.randn(batch, cin, 16)
    x[:, 0] += torch.arange(16.0)  # time order matters: a flipped kernel or a window off by one would differ
    expected = F.conv1d(x, conv.weight, conv.bias, stride=stride, padding=pad)
    conv.as_matmul = True
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_a_temporal_conv_in_training_on_the_cpu_is_a_matrix_product_with_the_convolutions_gradients():
    """Training (gradients recorded) takes the matrix-product form, whose backward must give the
    convolution's gradients for the weight, the bias and the input; inference (no_grad) keeps
    the convolution's kernels."""
    torch.manual_seed(0)
    conv = TemporalConv1d(6, 4, 5, stride=2, padding=2)
    x = torch.randn(3, 6, 16, requires_grad=True)
    upstream = torch.randn(3, 4, 8)
    y = conv(x)
    assert y.grad_fn is not None and "Convolution" not in type(y.grad_fn).__name__
    grads = torch.autograd.grad(y, (conv.weight, conv.bias, x), upstream)
    expected = torch.autograd.grad(F.conv1d(x, conv.weight, conv.bias, stride=2, padding=2), (conv.weight, conv.bias, x), upstream)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), torch.profiler.profile() as prof:
        torch.testing.assert_close(conv(x), y.detach())
    ops = {e.name for e in prof.events()}
    assert "aten::convolution" in ops and "aten::linear" not in ops, ops


def test_unet_with_convs_as_matmul_predicts_the_same_noise():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 4, down_dims=[16, 32, 64], diffusion_step_embed_dim=8).eval()
    x, k, c = torch.randn(2, 16, 2), torch.tensor([3, 70]), torch.randn(2, 4)
    with torch.no_grad():
        expected = net(x, k, c)
        net.convs_as_matmul(True)
        assert all(m.as_matmul for m in net.modules() if isinstance(m, TemporalConv1d))
        torch.testing.assert_close(net(x, k, c), expected, rtol=1e-5, atol=1e-5)


def test_film_conditioning_changes_the_output():
    net = ConditionalUnet1D(2, 4, down_dims=[16, 32], diffusion_step_embed_dim=8)
    x, k = torch.randn(1, 8, 2), torch.tensor([3])
    assert not torch.allclose(net(x, k, torch.zeros(1, 4)), net(x, k, torch.ones(1, 4)))


def test_spatial_softmax_finds_the_peak():
    ss = SpatialSoftmax(1, num_kp=1)
    torch.nn.init.ones_(ss.keypoints.weight)
    torch.nn.init.zeros_(ss.keypoints.bias)
    fmap = torch.zeros(1, 1, 5, 5)
    fmap[0, 0, 4, 0] = 50.0  # bottom-left
    np.testing.assert_allclose(ss(fmap)[0].detach(), [-1.0, 1.0], atol=1e-3)


def test_crops_random_in_training_center_in_eval():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    c = crop(x, (4, 4), random=False)
    torch.testing.assert_close(c, x[:, :, 1:5, 1:5])
    torch.manual_seed(0)
    r = crop(x, (4, 4), random=True)
    assert r.shape == (2, 3, 4, 4)
    for n in range(2):  # each crop is a real window of its own image
        top = int((r[n, 0, 0, 0] - x[n, 0, 0, 0]) // 6)
        left = int((r[n, 0, 0, 0] - x[n, 0, 0, 0]) % 6)
        torch.testing.assert_close(r[n], x[n, :, top : top + 4, left : left + 4])


def test_image_encoder_has_groupnorm_only_and_shapes():
    enc = ObsEncoder({"image": {"shape": [96, 96, 3], "type": "rgb"}, "pos": {"shape": [2], "type": "low_dim"}},
                     {"crop_shape": [84, 84], "feature_dim": 16, "width": 8})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in enc.modules())
    out = enc({"image": torch.rand(2, 3, 3, 96, 96), "pos": torch.rand(2, 3, 2)})
    assert out.shape == (2, 3, 18) and enc.feature_dim == 18


@pytest.fixture(scope="module")
def state_data(pusht_path):
    return load_task_data(pusht_path, STATE_SPEC, {"source": "action"}, max_episodes=3)


def test_predict_action_shape_and_units(state_data):
    policy = DiffusionPolicy(state_data.shape_meta, Normalizer(state_data.stats), num_inference_steps=4, **SMALL).eval()
    obs = {"agent_pos": torch.rand(5, 2, 2) * 500, "keypoint": torch.rand(5, 2, 18) * 500}
    actions = policy.predict_action(obs)
    assert actions.shape == (5, 16 - 2 + 1, 2)
    lo, hi = state_data.stats["action"]["min"], state_data.stats["action"]["max"]
    # clip_sample keeps denoised actions in [-1, 1]: in store units, inside the data's range
    assert (actions.numpy() >= lo - 1e-3).all() and (actions.numpy() <= hi + 1e-3).all()


@pytest.fixture(scope="module")
def trained(state_data):
    """A small Diffusion Policy trained 500 steps on three PushT episodes; (policy, sampler, losses)."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(state_data.shape_meta, Normalizer(state_data.stats), **SMALL)
    train, _ = state_data.samplers(16, 2, 1, 7, val_ratio=0.0, seed=0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    fixed = to_torch(train.sample(np.arange(0, len(train), 4)), state_data.shape_meta["obs"], [], torch.device("cpu"))

    def eval_loss():
        torch.manual_seed(1)  # same noise and diffusion steps each time
        with torch.no_grad():
            return policy.compute_loss(fixed).item()

    start = eval_loss()
    for step in range(500):
        batch = to_torch(train.sample(rng.integers(0, len(train), 64)), state_data.shape_meta["obs"], [], torch.device("cpu"))
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval(), train, (start, eval_loss())


def test_overfits_a_few_episodes(trained):
    _, _, (start, end) = trained
    assert end < 0.25 * start


def _batch(train, state_data, n=48):
    """``n`` training windows spread over the episodes."""
    return to_torch(train.sample(np.linspace(0, len(train) - 1, n).astype(int)), state_data.shape_meta["obs"], [],
                    torch.device("cpu"))


def _best_constant_error(demo: torch.Tensor) -> float:
    """min over constant chunks c of the mean distance to the demos: what any policy that ignores its
    input can at best achieve in expectation (c: the per-step geometric median, Weiszfeld's iteration)."""
    c = demo.mean(0)
    for _ in range(200):
        w = 1.0 / (demo - c).norm(dim=-1).clamp_min(1e-6)
        c = (w[..., None] * demo).sum(0) / w.sum(0)[..., None]
    return (demo - c).norm(dim=-1).mean().item()


def test_sampled_actions_match_the_demonstrations_and_a_policy_blind_to_its_input_fails(trained, state_data):
    """DDIM samples on training windows, in store units (PushT px), against the demonstrated actions:
    within 0.6 of the error of the best input-blind answer. Cutting the conditioning must fail it."""
    policy, train, _ = trained
    batch = _batch(train, state_data)
    obs, demo = batch["obs"], batch["action"][:, 1:9]  # the 8 demonstrated actions from the newest observation on
    blind = _best_constant_error(demo)

    def error(p):
        pred = p.predict_action(obs, generator=torch.Generator().manual_seed(0))[:, :8]
        return (pred - demo).norm(dim=-1).mean().item()

    assert error(policy) < 0.6 * blind, (error(policy), blind)
    cut = DiffusionPolicy(state_data.shape_meta, Normalizer(state_data.stats), **SMALL).eval()
    cut.load_state_dict(policy.state_dict())
    cut._condition = lambda o: torch.zeros_like(DiffusionPolicy._condition(cut, o))  # the observation never arrives
    assert error(cut) > 0.6 * blind


def test_the_denoiser_uses_the_diffusion_step(trained, state_data):
    """The trained network predicts the noise far better at the true diffusion step than at a wrong one
    (a U-Net that ignored its step embedding could not)."""
    policy, train, _ = trained
    batch = _batch(train, state_data)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        cond = policy._condition(batch["obs"])
        action = policy.normalizer.normalize("action", batch["action"])
        noise = torch.randn(action.shape, generator=g)
        k = torch.randint(0, 100, (len(action),), generator=g)
        noisy = policy.noise_scheduler.add_noise(action, noise, k)
        right = F.mse_loss(policy.model(noisy, k, cond), noise).item()
        wrong = F.mse_loss(policy.model(noisy, (k + 50) % 100, cond), noise).item()
    assert right < 0.5 * wrong, (right, wrong)


class _Oracle(torch.nn.Module):
    """The exact noise predictor for data concentrated on one action sequence a*(cond) (normalized):
    eps = (x_k - sqrt(abar_k) a*) / sqrt(1 - abar_k), at the diffusion step k it is handed."""

    def __init__(self, alphas_cumprod, horizon):
        super().__init__()
        self.abar, self.horizon = alphas_cumprod, horizon

    def target(self, cond):
        return (0.5 * torch.tanh(cond[:, :2])[:, None, :] + 0.02 * torch.arange(self.horizon)[None, :, None]).clamp(-1, 1)

    def forward(self, x, k, cond):
        abar = self.abar[k].to(x.dtype).view(-1, 1, 1)
        return (x - abar.sqrt() * self.target(cond)) / (1 - abar).sqrt()


@pytest.mark.parametrize("sampler,steps", [("ddim", 1), ("ddim", 4), ("ddim", 10), ("ddim", 100), ("ddpm", 100)])
def test_sampling_with_the_exact_denoiser_returns_the_target_chunk_in_store_units(state_data, sampler, steps):
    """Sampling (DDIM or DDPM steps, the step given to the network, clipping), the chunk's slice (from
    the newest observation step on) and unnormalization, checked against a known answer."""
    policy = DiffusionPolicy(state_data.shape_meta, Normalizer(state_data.stats), num_inference_steps=steps,
                             inference_scheduler=sampler, **SMALL).eval()
    policy.model = _Oracle(policy.noise_scheduler.alphas_cumprod, policy.horizon)
    obs = {"agent_pos": torch.rand(3, 2, 2) * 500, "keypoint": torch.rand(3, 2, 18) * 500}
    chunk = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    expected = policy.normalizer.unnormalize("action", policy.model.target(policy._condition(obs)))[:, policy.n_obs_steps - 1:]
    assert chunk.shape == expected.shape == (3, 15, 2)
    torch.testing.assert_close(chunk, expected, atol=1e-2, rtol=0)  # px
    assert (expected[:, 1:] - expected[:, :-1]).abs().max() > 1  # the steps differ: a wrong slice would show


def test_checkpoint_round_trip_needs_no_dataset(tmp_path, state_data):
    norm = Normalizer(state_data.stats)
    kwargs = dict(num_inference_steps=3, **SMALL)
    policy = DiffusionPolicy(state_data.shape_meta, norm, **kwargs).eval()
    ema = {k: v + 0.01 if v.is_floating_point() and "normalizer" not in k else v for k, v in policy.state_dict().items()}
    path = save_checkpoint(tmp_path / "c.pt", policy, "protege.policies.diffusion.DiffusionPolicy", kwargs,
                           {"task": {"name": "t"}}, ema, {"step": 7})
    loaded, ckpt = load_policy(path, use_ema=False)
    assert ckpt["train_state"]["step"] == 7 and not loaded.training
    obs = {"agent_pos": torch.rand(2, 2, 2) * 500, "keypoint": torch.rand(2, 2, 18) * 500}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    b = loaded.predict_action(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    with_ema, _ = load_policy(path, use_ema=True)
    assert not torch.allclose(with_ema.predict_action(obs, generator=torch.Generator().manual_seed(0)), a)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")
