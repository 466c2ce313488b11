"""Float32 matrix products through oneDNN instead of MKL, where that is exact and faster.

PyTorch's x86 builds run float32 matrix products (``F.linear``, ``matmul``, ``bmm``; forward and
backward) through MKL. On AMD CPUs MKL takes a generic AVX2 code path even when the CPU has
AVX-512, while oneDNN, the other math library inside PyTorch (it already runs every
convolution), picks its kernels by instruction set: on a 2-core AMD EPYC with AVX-512 it ran
ACT's transformer products at about twice MKL's rate (``benchmarks/train_speed.py``).

PyTorch sends float32 products to oneDNN only under
``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``. That setting *permits* oneDNN to round
the inputs to bfloat16 ("bf32", 8 mantissa bits), which oneDNN does only with AMX tiles (Intel
Sapphire Rapids and later); on other CPUs it runs its float32 kernels. So the setting is never
taken on trust: :func:`probe` runs products of the sizes our policies use (and transposed
operands, as the backward pass has them) under it and compares each with float64. Float32 lands
within ~1e-7 of it, bfloat16 rounding ~1e-3 away: anything beyond 1e-5 counts as rounded. It
also times the products both ways. ``auto`` turns the setting on only where they are exact and
oneDNN is at least :data:`MIN_SPEEDUP` times faster (MKL is tuned for Intel CPUs, where the probe
should keep it; on CPUs without AVX-512 or AVX-NE-CONVERT PyTorch never takes that route).

A policy compiled under the setting (``Policy.compile_for_inference``) must also run under it:
torch.compile guards on it and would compile again on the first call outside. protege-eval and
protege-deploy hold one setting for the whole run. The setting decides, when inductor compiles,
which library the weights are prepacked for (oneDNN's ``inner_product`` under it, MKL's packed
GEMM without), and those products stay there. Once compiled, ACT runs its attention's products
in MKL: :func:`runtime_products_in_mkl`.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

MIN_SPEEDUP = 1.2  # oneDNN's products must take at most 1/1.2 of MKL's time for ``auto``
MAX_REL_ERROR = 1e-5  # relative to float64: float32 gives ~1e-7, bfloat16 inputs ~1e-3
# (M, K, N) of an (M x K) @ (K x N) product: ACT's and the U-Net's linear layers at batch 1 and
# at training batches, and a square one
PROBE_SHAPES = ((20, 256, 1024), (704, 256, 768), (1280, 1024, 256), (512, 512, 512))


@dataclass(frozen=True)
class Probe:
    """What :func:`probe` found on this machine.

    Attributes:
        exact: every probe product under the setting lies within ``MAX_REL_ERROR`` of float64.
        max_rel_error: the largest ||y - y64|| / ||y64|| over the probe products.
        speedup: MKL's time / oneDNN's time on the probe products (median of repeats).
        reason: why ``auto`` leaves it off ("" when it turns it on).
    """

    exact: bool
    max_rel_error: float
    speedup: float
    reason: str

    @property
    def usable(self) -> bool:
        return not self.reason


def rel_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """||y - reference|| / ||reference|| in float64."""
    return float((y.double() - reference).norm() / reference.norm())


@contextlib.contextmanager
def _onednn_products() -> Iterator[None]:
    """mkldnn.matmul.fp32_precision = "bf16" within the block, set as the legacy
    ``set_float32_matmul_precision("medium")`` sets it (CUDA's to tf32 as well: this runs only for
    CPU policies), so inductor's own reads of the legacy setting (max-autotune's cache keys) see a
    consistent state; everything restored after."""
    legacy = torch.get_float32_matmul_precision()
    backends = (torch.backends.mkldnn.matmul, torch.backends.cuda.matmul)
    previous = [b.fp32_precision for b in backends]
    torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(legacy)
        for b, value in zip(backends, previous):
            b.fp32_precision = value


def _median_time(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@functools.cache
def probe() -> Probe:
    """Run the probe products once per process (a few dozen products); see the module docstring."""
    if not torch.backends.mkldnn.is_available():
        return Probe(False, float("nan"), float("nan"), "this PyTorch build has no oneDNN")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # PyTorch's own condition for that route
        return Probe(False, float("nan"), float("nan"),
                     "PyTorch routes float32 products to oneDNN only on CPUs with AVX-512 or AVX-NE-CONVERT")
    g = torch.Generator().manual_seed(0)
    operands = []
    for m, k, n in PROBE_SHAPES:
        a, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        operands += [(a, b.t()), (a.t().contiguous().t(), b.t().contiguous())]  # B^T, and A given transposed
    worst = 0.0
    with _onednn_products():
        for a, b in operands:
            worst = max(worst, rel_error(a @ b, a.double() @ b.double()))
    exact = worst <= MAX_REL_ERROR

    def run_all():
        for a, b in operands:
            a @ b

    mkl = _median_time(run_all)
    with _onednn_products():
        onednn = _median_time(run_all)
    speedup = mkl / onednn
    reason = ("" if exact and speedup >= MIN_SPEEDUP
              else f"oneDNN would round float32 products (error {worst:.1e} against float64)" if not exact
              else f"oneDNN's float32 products are not faster than MKL's here ({speedup:.2f}x)")
    return Probe(exact, worst, speedup, reason)


@contextlib.contextmanager
def runtime_products_in_mkl() -> Iterator[None]:
    """Within the block, float32 products go to MKL even where the oneDNN setting is on, all but
    those whose weights inductor prepacked for oneDNN when it compiled; nothing changes where the
    setting is off.

    For a compiled policy at batch 1 whose ``runtime_products_in_mkl`` is set (ACT;
    ``Policy.compile_for_inference`` applies it to every call after the one that compiled): its
    weights were prepacked for oneDNN when inductor compiled it under the setting and stay there,
    and what the setting still routes at run time are the many small blocks inside PyTorch's CPU
    attention kernel (``_scaled_dot_product_flash_attention_for_cpu``), each a oneDNN call of its
    own whose fixed cost outweighs oneDNN's speed at these sizes (``benchmarks/chunk_profile.py``
    times both). Not for policies whose weight products inductor leaves to ATen's kernels
    (Diffusion Policy's, autotuned against its GEMM template): those read the flag at run time
    too, and large ones are faster in oneDNN.
    Only oneDNN's own flag changes: CUDA's, on which dynamo guards compiled code
    (``allow_tf32``), stays, so nothing compiles again.
    """
    flag = torch.backends.mkldnn.matmul
    if flag.fp32_precision != "bf16":
        yield
        return
    flag.fp32_precision = "ieee"
    try:
        yield
    finally:
        flag.fp32_precision = "bf16"


def check_setting(setting: Any, name: str = "onednn_matmul") -> None:
    """Raises ValueError unless ``setting`` is auto, true or false (``name`` is the config key)."""
    if setting not in ("auto", True, False):
        raise ValueError(f"{name} must be auto, true or false, got {setting!r}")


@contextlib.contextmanager
def onednn_matmul(setting: Any = "auto", device: torch.device | str = "cpu", name: str = "onednn_matmul") -> Iterator[bool]:
    """Within the block, run float32 matrix products through oneDNN when ``setting`` says so;
    yields whether it does. The previous setting is restored on exit.

    Args:
        setting: ``auto`` (when :func:`probe` finds oneDNN exact and faster on this CPU), ``true``
            (whenever it is exact, faster or not) or ``false`` (never: MKL, PyTorch's default).
        device: where the policy runs; on anything but the CPU this does nothing (yields False).
        name: the config key, for the errors.

    Raises:
        ValueError: ``setting`` is none of auto / true / false, or ``true`` where oneDNN would
            round float32 products or is missing.
    """
    check_setting(setting, name)
    if not setting or torch.device(device).type != "cpu":
        yield False
        return
    found = probe()
    if setting is True and not found.exact:
        raise ValueError(f"{name}=true refused: {found.reason}; use auto or false")
    if setting == "auto" and not found.usable:
        yield False
        return
    with _onednn_products():
        yield True


def describe(on: bool, setting: Any = "auto", device: torch.device | str = "cpu") -> str:
    """One line for a CLI's log: which library runs the float32 products, and why."""
    if torch.device(device).type != "cpu":
        return f"float32 matrix products: {torch.device(device).type}'s libraries (onednn_matmul is for the CPU)"
    if on:
        return f"float32 matrix products: oneDNN ({probe().speedup:.1f}x MKL's speed on this CPU, exact)"
    if setting == "auto":
        return f"float32 matrix products: MKL ({probe().reason})"
    return "float32 matrix products: MKL (onednn_matmul=false)"
