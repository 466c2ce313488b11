"""The trainer's step settings: bf16 autocast (``train.bf16``) and its optimizer."""

import copy

import pytest
import torch

from protege.policies.train import adamw, bf16_autocast

from test_cli import run


def test_bf16_autocast_follows_the_setting_and_the_device():
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with bf16_autocast("auto", torch.device("cpu")):  # auto: bf16 on CUDA only, so fp32 here
        assert layer(x).dtype == torch.float32
    with bf16_autocast(False, torch.device("cpu")):
        assert layer(x).dtype == torch.float32
    with bf16_autocast(True, torch.device("cpu")):  # asked for: the CPU computes in bf16
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="train.bf16"):
        bf16_autocast("yes", torch.device("cpu"))


def test_a_bad_bf16_setting_is_refused_before_the_data_loads(tmp_path):
    p = run("protege-train", "train.bf16=sometimes", f"dataset={tmp_path / 'missing.zarr'}", check=False, cwd=tmp_path)
    out = p.stderr + p.stdout
    assert p.returncode == 2 and "train.bf16 must be auto, true or false" in out and "Traceback" not in out, out


def test_the_trainers_fused_adamw_makes_the_default_implementations_updates_and_resumes_its_state():
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Mish(), torch.nn.Linear(16, 2))

    def steps(net, opt, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            x, y = torch.randn(32, 8, generator=g), torch.randn(32, 2, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()

    kw = dict(lr=1e-2, betas=(0.95, 0.999), weight_decay=1e-2)
    ours, reference = model(), model()
    opt = adamw(ours.parameters(), torch.device("cpu"), **kw)
    assert opt.defaults["fused"]
    ref_opt = torch.optim.AdamW(reference.parameters(), **kw)
    steps(ours, opt, 5, 1)
    steps(reference, ref_opt, 5, 1)
    for p, q in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # a checkpoint of the default implementation resumes in the fused one
    resumed = model()
    resumed.load_state_dict(reference.state_dict())
    resumed_opt = adamw(resumed.parameters(), torch.device("cpu"), **kw)
    resumed_opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    steps(resumed, resumed_opt, 3, 2)
    steps(reference, ref_opt, 3, 2)
    for p, q in zip(resumed.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
