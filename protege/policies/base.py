"""The Policy API shared by every policy family (DESIGN.md, "Policy")."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .normalizer import Normalizer
from .tensors import obs_to_torch


class CompileError(RuntimeError):
    """``torch.compile`` could not compile a policy (no C++ compiler, no Triton, an unsupported op)."""


class Policy(nn.Module):
    """A visuomotor policy: tensors in, tensors out; it never sees hardware or the simulator.

    Observations are {key: (B, To, ...)} tensors: low-dim keys float32 (B, To, D) in the store's
    units, images float32 (B, To, C, H, W) in [0, 1]. Actions are float32 (B, Ta, Da) in the
    store's units. The normalizer lives inside the policy, so its statistics are saved with the
    weights.

    Subclasses implement :meth:`compute_loss` and :meth:`predict_action`; their constructor takes
    ``shape_meta``, ``normalizer`` and the keyword arguments of their hydra config (whose
    ``_target_`` names the class), which the checkpoint stores so that loading needs no dataset.
    """

    n_obs_steps: int = 1
    horizon: int = 1  # action steps per training sample
    n_action_steps: int = 1  # actions executed per chunk under receding horizon
    num_inference_steps: int | None = None  # denoising steps per prediction (diffusion); None: one pass
    inference_methods: tuple[str, ...] = ()  # the methods :meth:`compile_for_inference` compiles
    compiled_batch_size: int | None = None  # set by :meth:`compile_for_inference` (None: eager)
    # on the CPU, let inductor's max-autotune pick each matrix product's kernel by timing ATen's
    # against its C++ GEMM template (prepacked weights, micro-kernels sized to the product), see
    # :func:`_frozen_compile`; off where torch miscompiles the policy (ACT)
    autotune_gemms: bool = False
    # once compiled, run the products that read onednn_matmul's flag at run time in MKL (see
    # protege.policies.onednn.runtime_products_in_mkl): ACT sets it (there those are its attention's);
    # not where products with weights are left to ATen's kernels (Diffusion Policy's, autotuned)
    runtime_products_in_mkl: bool = False

    def __init__(self, shape_meta: Mapping[str, Any], normalizer: Normalizer):
        super().__init__()
        self.shape_meta = shape_meta
        self.normalizer = normalizer

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of a batch ``{"obs": {...}, "action": (B, horizon, Da), "mask": (B, horizon)}``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Action chunk (B, Ta, Da) starting at the latest observation step."""
        raise NotImplementedError

    @property
    def sampler_padding(self) -> tuple[int, int]:
        """(pad_before, pad_after) steps a training window may reach outside its episode
        (Diffusion Policy: To - 1 before, Ta - 1 after)."""
        return self.n_obs_steps - 1, self.n_action_steps - 1

    def set_num_inference_steps(self, n: int) -> None:
        """Use ``n`` denoising steps per prediction from now on.

        Raises:
            ValueError: the policy predicts in one pass (``num_inference_steps`` is None), or n < 1.
        """
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__} predicts in one pass; it has no inference steps to set")
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {n}")
        self.num_inference_steps = int(n)

    def compile_for_inference(self, batch_size: int = 1) -> float:
        """Compile the per-chunk computation (the methods named by ``inference_methods``) with
        ``torch.compile`` (inductor; the weights frozen as constants, and on the CPU a C++ wrapper
        around the kernels and, where ``autotune_gemms`` is set, matrix-product kernels chosen by
        timing), then check it: from a random observation of ``batch_size`` (seed 0), with the
        same noise, the compiled policy must predict what the eager one does, to 1e-3 of the
        largest action's magnitude (or of 1). That first compiled prediction is also when the
        compilation happens, so it is done now and not at the first chunk on the robot.
        Afterwards the policy is for inference only: its weights must not change, and ``train()``
        raises. Another batch size compiles again at its first call (tens of seconds each), so
        callers keep to ``compiled_batch_size`` (the evaluator pads its batches to it).

        Returns the seconds the compilation took (one to two minutes for the image policies on
        two CPU cores, less when inductor's cache holds the kernels).

        Raises:
            CompileError: the policy has nothing to compile, compilation failed (inductor needs a
                C++ compiler on the CPU, a Triton build on CUDA), or the compiled policy's actions
                differ from the eager policy's (a compiler bug); the policy is then left as it
                was, uncompiled.
        """
        if not self.inference_methods:
            raise CompileError(f"{type(self).__name__} names no inference methods to compile")
        eager = {name: getattr(self, name) for name in self.inference_methods}
        probe = self.example_obs(batch_size, seed=0)
        self.eval()
        expected = self._seeded_prediction(probe)  # the policy as it trained, before any change below
        t = time.perf_counter()
        try:
            self._compiled_form(True)
            for name, fn in eager.items():
                setattr(self, name, _frozen_compile(fn, cpp_wrapper=self.device.type == "cpu",
                                                    autotune_gemms=self.autotune_gemms and self.device.type == "cpu"))
            self._seeded_prediction(probe)  # compiles
            got = self._seeded_prediction(probe)  # as every later call runs (see _frozen_compile)
        except Exception as e:  # noqa: BLE001 - any failure means: run uncompiled
            self._uncompile()
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise CompileError(f"compiling {type(self).__name__} for inference failed ({type(e).__name__}: {first}); "
                               "torch.compile needs a C++ compiler (gcc or clang) on the CPU and Triton on CUDA. "
                               "Run without compile=true to use the eager policy") from e
        seconds = time.perf_counter() - t
        scale = max(1.0, expected.abs().max().item())
        error = (got - expected).abs().max().item() if torch.isfinite(got).all() else float("inf")
        if not error <= 1e-3 * scale:
            self._uncompile()
            raise CompileError(f"the compiled {type(self).__name__} predicts other actions than the eager one (largest "
                               f"difference {error:.3g}, largest action {scale:.3g}) on a test observation: a bug in "
                               f"torch.compile (torch {torch.__version__}). Run without compile=true to use the eager policy")
        self.compiled_batch_size = batch_size
        return seconds

    def _seeded_prediction(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """predict_action(obs) with the global random generators (the CPU's and the policy's
        device's) seeded to 0 and restored afterwards: two calls draw the same noise."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(0)
            return self.predict_action(obs)

    def _compiled_form(self, on: bool) -> None:
        """Switch modules to (or back from) the form the compiled code is built from; nothing by
        default (Diffusion Policy: its U-Net's convolutions as matrix products on the CPU)."""

    def _uncompile(self) -> None:
        for name in self.inference_methods:
            self.__dict__.pop(name, None)
        self._compiled_form(False)

    def example_obs(self, batch_size: int = 1, seed: int | None = None) -> dict[str, torch.Tensor]:
        """An observation {key: (batch_size, To, ...)} of the policy's keys and shapes, on its
        device, made as evaluation and deployment make theirs (:func:`~protege.policies.tensors.obs_to_torch`:
        images (B, To, 3, H, W) float32, contiguous), so a compiled policy sees the strides it
        will be called with. All zeros, or with ``seed`` random: uniform pixels, and low-dim
        values uniform between the training data's min and max."""
        arrays, image_keys = {}, []
        rng = np.random.default_rng(seed) if seed is not None else None
        for key, meta in self.shape_meta["obs"].items():
            rgb = meta["type"] == "rgb"
            shape = (batch_size, self.n_obs_steps, *meta["shape"])
            if rng is None:
                arrays[key] = np.zeros(shape, np.uint8 if rgb else np.float32)
            elif rgb:
                arrays[key] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                u = torch.as_tensor(rng.uniform(-1, 1, shape), dtype=torch.float32, device=self.device)
                arrays[key] = self.normalizer.unnormalize(key, u).cpu().numpy()
            image_keys += [key] if rgb else []
        return obs_to_torch(arrays, image_keys, self.device)

    def train(self, mode: bool = True) -> "Policy":
        if mode and self.compiled_batch_size is not None:
            raise RuntimeError("this policy is compiled for inference (its weights are frozen into the compiled "
                               "code); load the checkpoint again to train it")
        return super().train(mode)

    def init_pretrained(self) -> None:
        """Load pretrained weights the config asks for (a fresh training run only; a checkpoint
        already holds them). Nothing by default."""

    def reset(self) -> None:
        """Forget per-episode state (none by default)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def _frozen_compile(method, cpp_wrapper: bool, autotune_gemms: bool = False):
    """``torch.compile`` of a bound ``method`` whose every (re)compilation runs with inductor's
    ``freezing`` (and ``cpp_wrapper``) on: torch reads them from its global config when it
    compiles, which happens at a call, so the patch is applied around each call (``torch.compile``'s
    ``options`` do not reach ``freezing``). Freezing's layout optimization stays off: with it, torch
    2.14 fails to compile ACT's decoder at batch sizes above 1 (a view of a transposed tensor).

    The weights are frozen into the compiled code, so dynamo's guards on the modules (checked at
    every call: about 0.4 ms a U-Net call on a 2-core CPU, a quarter of a compiled Diffusion
    Policy chunk) are skipped (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``); guards on
    the inputs' shapes, dtypes and strides stay. That is safe only because each policy compiles
    its own copy of the method's code: dynamo keeps compiled code per code object, and without the
    copy a second policy of the same class would run the first one's weights.

    With ``autotune_gemms`` (CPU only), inductor's max-autotune times, for each matrix product,
    ATen's kernel against its C++ GEMM template, whose micro-kernels are generated for the
    product's shape with the frozen weight prepacked, and keeps the faster. At batch 1, where a
    Diffusion Policy U-Net product has 4 to 16 rows, the template halves a compiled chunk
    (``benchmarks/chunk_profile.py``, which also records the compile time, longer with it). torch 2.14.1
    computes a wrong product with it when the weight is a slice of a parameter at a storage
    offset, as ``nn.MultiheadAttention``'s packed in-projection makes when queries, keys and
    values differ (ACT): :meth:`Policy.compile_for_inference`'s check catches that.

    The first call compiles, under the ``onednn_matmul`` setting as it is, so the weights are
    prepacked for the library it chose; every later call runs under
    :func:`~protege.policies.onednn.runtime_products_in_mkl` when the policy's
    ``runtime_products_in_mkl`` is set (a later compilation, at another batch size, would then
    prepack for MKL: slower, not wrong; the CLIs keep to ``compiled_batch_size``)."""
    import types

    import torch._inductor.config as inductor

    from .onednn import runtime_products_in_mkl

    f = method.__func__
    own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    own.__kwdefaults__ = f.__kwdefaults__
    autotune = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",  # and no timing tables on stderr
                "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False} if autotune_gemms else {}
    compiled = torch.compile(types.MethodType(own, method.__self__),
                             options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})

    policy, compiled_once = method.__self__, False

    def call(*args, **kwargs):
        nonlocal compiled_once
        mkl = compiled_once and policy.runtime_products_in_mkl
        with (inductor.patch(freezing=True, cpp_wrapper=cpp_wrapper, layout_optimization=False, **autotune),
              runtime_products_in_mkl() if mkl else contextlib.nullcontext()):
            out = compiled(*args, **kwargs)
        compiled_once = True
        return out

    return call
