import numpy as np
import pytest
import torch

from protege.data.dataset import load_task_data
from protege.policies.normalizer import Normalizer
from protege.policies.act import ACTPolicy
from protege.policies.act.policy import kl_divergence
from protege.policies.act.model import sine_2d
from protege.policies.tensors import to_torch

SMALL = dict(chunk_size=8, n_action_steps=4, hidden_dim=32, dim_feedforward=64, n_heads=4, enc_layers=2, dec_layers=3,
             vae_enc_layers=2, dropout=0.0, backbone_width=8)
META = {"obs": {"image": {"shape": [32, 32, 3], "type": "rgb"}, "pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [3]}}


def _norm():
    stats = {k: {"min": np.zeros(d, np.float32), "max": np.ones(d, np.float32), "mean": np.zeros(d, np.float32),
                 "std": np.ones(d, np.float32)} for k, d in (("pos", 2), ("action", 3))}
    return Normalizer(stats, ["image"])


def _batch(b=4, k=8):
    obs = {"image": torch.rand(b, 1, 3, 32, 32), "pos": torch.rand(b, 1, 2)}
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[0, 5:] = False
    return {"obs": obs, "action": torch.rand(b, k, 3), "mask": mask}


def test_shapes_and_sampler_padding():
    policy = ACTPolicy(META, _norm(), **SMALL).eval()
    batch = _batch()
    assert policy.predict_action(batch["obs"]).shape == (4, 8, 3)
    assert policy.sampler_padding == (0, 7) and policy.horizon == 8
    assert torch.isfinite(policy.train().compute_loss(batch))


def test_padded_steps_do_not_count():
    torch.manual_seed(0)
    policy = ACTPolicy(META, _norm(), **{**SMALL, "kl_weight": 0.0}).eval()  # eval: no dropout
    batch = _batch()
    torch.manual_seed(1)
    base = policy.compute_loss(batch)
    batch["action"][0, 5:] += 100.0  # change only padded steps
    torch.manual_seed(1)
    assert policy.compute_loss(batch).item() == pytest.approx(base.item(), rel=1e-5)
    batch["action"][0, 4] += 100.0  # a real step
    torch.manual_seed(1)
    assert policy.compute_loss(batch).item() > base.item() + 1.0


def test_l1_is_averaged_over_every_chunk_step_with_padded_ones_zeroed_as_the_reference():
    """ACT's reference and LeRobot: (|a - a_hat| * ~is_pad).mean() over batch, steps and dims; not
    a mean over the unpadded steps only (which would weigh the KL term differently)."""
    policy = ACTPolicy(META, _norm(), **{**SMALL, "kl_weight": 0.0}).eval()
    policy._decode = lambda obs, z: torch.zeros(4, 8, 3)  # predicts 0: the L1 term is the mean |normalized action|
    batch = _batch()
    normalized = policy.normalizer.normalize("action", batch["action"])
    expected = (normalized.abs() * batch["mask"][..., None]).sum() / (4 * 8 * 3)
    assert policy.compute_loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kl_term():
    assert kl_divergence(torch.zeros(3, 32), torch.zeros(3, 32)).item() == 0.0
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, np.log(4.0)]])
    # 0.5 * (mu^2 + var - 1 - log var) per dim
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 * 1 + 0.5 * (4 - 1 - np.log(4.0)))


def test_every_decoder_layer_shapes_the_output():
    policy = ACTPolicy(META, _norm(), **SMALL).eval()
    obs = _batch()["obs"]
    before = policy.predict_action(obs)
    for layer in (policy.transformer.decoder[0], policy.transformer.decoder[-1]):
        with torch.no_grad():
            layer.ff[-1].bias.add_(torch.randn_like(layer.ff[-1].bias))  # not a uniform shift: LayerNorm follows
        after = policy.predict_action(obs)
        assert not torch.allclose(before, after)
        before = after


def test_sine_2d_embedding_is_distinct_per_position():
    pe = sine_2d(3, 4, 16)
    assert pe.shape == (12, 16)
    assert torch.cdist(pe, pe).add(torch.eye(12) * 10).min() > 1e-3


def test_overfits_a_few_pusht_episodes(pusht_path):
    spec = {"agent_pos": {"source": "state", "slice": [0, 2]}, "keypoint": {"source": "keypoint"}}
    data = load_task_data(pusht_path, spec, {"source": "action"}, max_episodes=2)
    torch.manual_seed(0)
    policy = ACTPolicy(data.shape_meta, Normalizer(data.stats), **{**SMALL, "hidden_dim": 64, "dim_feedforward": 128})
    train, _ = data.samplers(policy.horizon, 1, *policy.sampler_padding, 0.0, 0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    fixed = to_torch(train.sample(np.arange(0, len(train), 3)), data.shape_meta["obs"], [], torch.device("cpu"))
    policy.eval()
    start = policy.predict_action(fixed["obs"])
    err0 = (start - fixed["action"]).abs().mean().item()
    policy.train()
    for _ in range(300):
        batch = to_torch(train.sample(rng.integers(0, len(train), 32)), data.shape_meta["obs"], [], torch.device("cpu"))
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    err = (policy.predict_action(fixed["obs"]) - fixed["action"]).abs().mean().item()
    assert err < 0.3 * err0


def test_pretrained_backbone_loads_imagenet_layout_weights_and_fails_clearly(tmp_path):
    """A ResNet18 state dict in torchvision's layout goes into every camera's backbone (frozen
    BatchNorm statistics included); an unreadable source is one clear error; width must be 64."""
    import torchvision

    from protege.policies.encoders import PretrainedWeightsError

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        reference.bn1.running_mean.uniform_(-1, 1)  # statistics the frozen BatchNorm must carry over
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    kw = {**SMALL, "backbone_width": 64, "pretrained_backbone": str(path)}
    policy = ACTPolicy(META, _norm(), **kw)
    policy.init_pretrained()
    backbone = policy.backbones["image"]
    torch.testing.assert_close(backbone[0].weight, reference.conv1.weight)
    torch.testing.assert_close(backbone[1].running_mean, reference.bn1.running_mean)
    torch.testing.assert_close(backbone[7][1].conv2.weight, reference.layer4[1].conv2.weight)
    # the same features as torchvision's network on ImageNet-normalized input
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    reference.eval()
    expected = torch.nn.Sequential(*list(reference.children())[:-2])(policy.image_input(img))
    # (the backbone runs channels-last, so oneDNN sums in another order: float32 rounding ~1e-5)
    torch.testing.assert_close(backbone(policy.image_input(img)), expected, atol=5e-5, rtol=1e-4)
    assert torch.isfinite(policy.train().compute_loss(_batch()))
    with pytest.raises(PretrainedWeightsError, match="policy.pretrained_backbone=null"):
        ACTPolicy(META, _norm(), **{**kw, "pretrained_backbone": str(tmp_path / "missing.pth")}).init_pretrained()
    with pytest.raises(ValueError, match="backbone_width=64"):
        ACTPolicy(META, _norm(), **{**SMALL, "pretrained_backbone": "imagenet"})
