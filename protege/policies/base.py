"""The Policy API shared by every policy family (DESIGN.md, "Policy")."""

from __future__ import annotations

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
        around the kernels), then predict once from a zero observation of ``batch_size``, so that
        the compilation happens now and not at the first chunk on the robot. The actions equal
        the eager policy's up to float rounding. Afterwards the policy is for inference only: its
        weights must not change, and ``train()`` raises. Another batch size compiles again at its
        first call (tens of seconds each), so callers keep to ``compiled_batch_size`` (the
        evaluator pads its batches to it).

        Returns the seconds the compilation took (about a minute for the image policies on two
        CPU cores).

        Raises:
            CompileError: the policy has nothing to compile, or compilation failed (inductor
                needs a C++ compiler on the CPU, a Triton build on CUDA); the policy is then left
                as it was, uncompiled.
        """
        if not self.inference_methods:
            raise CompileError(f"{type(self).__name__} names no inference methods to compile")
        eager = {name: getattr(self, name) for name in self.inference_methods}
        t = time.perf_counter()
        try:
            for name, fn in eager.items():
                setattr(self, name, _frozen_compile(fn, cpp_wrapper=self.device.type == "cpu"))
            self.eval()
            with torch.no_grad():
                self.predict_action(self.example_obs(batch_size))
        except Exception as e:  # noqa: BLE001 - any failure means: run uncompiled
            for name in eager:
                self.__dict__.pop(name, None)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise CompileError(f"compiling {type(self).__name__} for inference failed ({type(e).__name__}: {first}); "
                               "torch.compile needs a C++ compiler (gcc or clang) on the CPU and Triton on CUDA. "
                               "Run without compile=true to use the eager policy") from e
        self.compiled_batch_size = batch_size
        return time.perf_counter() - t

    def example_obs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """A zero observation {key: (batch_size, To, ...)} of the policy's keys and shapes, on its
        device, made as evaluation and deployment make theirs (:func:`~protege.policies.tensors.obs_to_torch`:
        images (B, To, 3, H, W) float32, contiguous), so a compiled policy sees the strides it
        will be called with."""
        arrays, image_keys = {}, []
        for key, meta in self.shape_meta["obs"].items():
            rgb = meta["type"] == "rgb"
            arrays[key] = np.zeros((batch_size, self.n_obs_steps, *meta["shape"]), np.uint8 if rgb else np.float32)
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


def _frozen_compile(method, cpp_wrapper: bool):
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
    copy a second policy of the same class would run the first one's weights."""
    import types

    import torch._inductor.config as inductor

    f = method.__func__
    own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    own.__kwdefaults__ = f.__kwdefaults__
    compiled = torch.compile(types.MethodType(own, method.__self__),
                             options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})

    def call(*args, **kwargs):
        with inductor.patch(freezing=True, cpp_wrapper=cpp_wrapper, layout_optimization=False):
            return compiled(*args, **kwargs)

    return call
