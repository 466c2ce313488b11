"""Float32 matrix products through oneDNN (``onednn_matmul``): only where exact, and restored after."""

import pytest
import torch

from protege.policies import onednn
from protege.policies.onednn import MAX_REL_ERROR, onednn_matmul, probe, rel_error

from test_cli import run


def test_the_probe_criterion_tells_float32_products_from_bfloat16_rounded_ones():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 128, generator=g)
    reference = a.double() @ b.double()
    assert rel_error(a @ b, reference) < MAX_REL_ERROR / 10  # float32: ~1e-7
    rounded = a.bfloat16().float() @ b.bfloat16().float()  # what oneDNN's "bf32" would compute
    assert rel_error(rounded, reference) > MAX_REL_ERROR * 10


def test_the_setting_is_validated_applied_only_on_the_cpu_and_restored():
    before = torch.backends.mkldnn.matmul.fp32_precision
    with pytest.raises(ValueError, match="train.onednn_matmul must be auto, true or false"):
        with onednn_matmul("sometimes", "cpu", "train.onednn_matmul"):
            pass
    with onednn_matmul(False) as on:
        assert on is False and torch.backends.mkldnn.matmul.fp32_precision == before
    with onednn_matmul("auto", "cuda") as on:  # CUDA has its own libraries: nothing changes
        assert on is False and torch.backends.mkldnn.matmul.fp32_precision == before
    with onednn_matmul("auto") as on:
        assert on == probe().usable
        assert torch.backends.mkldnn.matmul.fp32_precision == ("bf16" if on else before)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    with pytest.raises(KeyError):  # restored on an error inside the block too
        with onednn_matmul(True if probe().exact else False):
            raise KeyError
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def test_an_act_training_step_runs_its_products_in_onednn_with_mkls_gradients(capfd):
    """Where auto turns it on: the products really run in oneDNN (its verbose log names matmul
    primitives) and the gradients are MKL's to float32 accuracy (a bfloat16 rounding would be
    ~1e-3 away)."""
    if not probe().usable:
        pytest.skip(f"auto leaves oneDNN off on this CPU: {probe().reason}")
    from test_compile import _act

    g = torch.Generator().manual_seed(0)
    batch = {"obs": {"image": torch.rand(16, 1, 3, 32, 32, generator=g), "pos": torch.randn(16, 1, 2, generator=g)},
             "action": torch.rand(16, 8, 3, generator=g) * 2 - 1, "mask": torch.ones(16, 8, dtype=torch.bool)}

    def grads(setting):
        policy = _act().train()
        torch.manual_seed(0)  # the same dropout masks and latent noise
        with onednn_matmul(setting):
            policy.compute_loss(batch).backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

    mkl = grads(False)
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        fast = grads("auto")
    log = capfd.readouterr().out
    assert ",exec,cpu,matmul," in log or ",exec,cpu,inner_product," in log, log[-2000:]
    assert float((fast - mkl).norm() / mkl.norm()) < 1e-4


def test_a_bad_onednn_setting_is_refused_before_the_data_loads(tmp_path):
    p = run("protege-train", "train.onednn_matmul=sometimes", f"dataset={tmp_path / 'missing.zarr'}", check=False, cwd=tmp_path)
    out = p.stderr + p.stdout
    assert p.returncode == 2 and "train.onednn_matmul must be auto, true or false" in out and "Traceback" not in out, out


def test_describe_names_the_library_and_why():
    assert "MKL (onednn_matmul=false)" in onednn.describe(False, False)
    assert "cuda's libraries" in onednn.describe(False, "auto", "cuda")
    found = probe()
    assert onednn.describe(found.usable, "auto").startswith(
        "float32 matrix products: oneDNN" if found.usable else "float32 matrix products: MKL (")
