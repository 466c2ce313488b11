import numpy as np
import pytest
import torch

from protege.data.dataset import load_task_data
from protege.policies.normalizer import Normalizer
from protege.policies.checkpoint import CheckpointError, load_policy, read_checkpoint, save_checkpoint
from protege.policies.diffusion import DiffusionPolicy
from protege.policies.diffusion.unet import ConditionalUnet1D
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


def test_overfits_a_few_episodes(state_data):
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
    for step in range(250):
        batch = to_torch(train.sample(rng.integers(0, len(train), 64)), state_data.shape_meta["obs"], [], torch.device("cpu"))
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.25 * start


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
