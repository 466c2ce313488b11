"""The trainer's step settings: bf16 autocast (``train.bf16``)."""

import pytest
import torch

from protege.policies.train import bf16_autocast

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
