"""Keep freed memory in the process for reuse instead of handing it back to the OS (glibc's malloc).

A training step frees and allocates the same large tensors every step (activations, their
gradients, the optimizer's temporaries). glibc's malloc serves each allocation above its mmap
threshold (which it raises to at most 32 MiB) with a fresh ``mmap`` and unmaps it on free, so the
next step writes to new pages, and the kernel zeroes each 4 KiB page on its first touch: one page
fault each, hundreds of thousands a step for the paper-size Diffusion Policy at batch 64, none
with freed memory kept (``benchmarks/train_speed.py`` times both; ``tests/test_malloc.py``
counts the faults).

:func:`keep_freed_memory` sets, through glibc's ``mallopt``, ``M_MMAP_MAX = 0`` (every allocation
from the heap) and ``M_TRIM_THRESHOLD = INT_MAX`` (the heap's free top is never given back). The
cost: the process's resident memory stays near its peak, as PyTorch's CUDA caching allocator
keeps a GPU's, and the first few steps may grow the heap past one step's need before its freed
blocks merge and are reused (a 64 MiB tensor allocated over and over: 4-9 fresh blocks, then one
reused, in ``tests/test_malloc.py``'s fresh processes). Nothing changes in the arithmetic. Only where glibc's ``mallopt`` exists (Linux
with glibc); elsewhere it does nothing and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h
INT_MAX = 2**31 - 1
# where glibc's adaptive thresholds settle in a process that frees large blocks (their ceiling on
# 64-bit: mmap threshold 32 MiB, trim threshold twice that); mmap count limit back to its default
GLIBC_STEADY_STATE = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 * 2**20, M_TRIM_THRESHOLD: 64 * 2**20}


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    """Whether this process's malloc is glibc's, whose settings :func:`keep_freed_memory` changes."""
    return _libc() is not None


@contextlib.contextmanager
def keep_freed_memory(on: bool = True, device: str | object = "cpu") -> Iterator[bool]:
    """Within the block, glibc's malloc keeps freed memory for reuse (module docstring); yields
    whether it does (False where ``on`` is false, ``device``, where the policy trains, is not the
    CPU, whose steps' tensors this is for, or the C library is not glibc). On exit the free
    memory is returned to the OS (``malloc_trim``) and glibc's limits are set where its adaptive
    thresholds settle in a process that frees large blocks (allocations above 32 MiB mapped
    afresh each time): any ``mallopt`` call turns the adaptation off for good, and its starting
    point (128 KiB) would map far more than a long-running process does.

    Raises:
        OSError: glibc refused a setting (it does not for these values).
    """
    libc = _libc() if on and _is_cpu(device) else None
    if libc is None:
        yield False
        return
    _set(libc, {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: INT_MAX})
    try:
        yield True
    finally:
        _set(libc, GLIBC_STEADY_STATE)
        libc.malloc_trim(0)


def _is_cpu(device: str | object) -> bool:
    return str(device).split(":")[0] == "cpu"


def _set(libc: ctypes.CDLL, params: dict[int, int]) -> None:
    for param, value in params.items():
        if libc.mallopt(param, value) != 1:
            raise OSError(f"glibc's mallopt({param}, {value}) failed")


def describe(on: bool, setting: bool = True, device: str | object = "cpu") -> str:
    """One line for a CLI's log (``device``: where the policy trains; the setting is the CPU's)."""
    if not _is_cpu(device):
        return f"memory: the system allocator as is (keep_freed_memory is for training on the CPU, not {device})"
    if on:
        return "memory: freed memory kept for reuse (glibc malloc; no page faults on each step's large tensors)"
    if setting:
        return "memory: the system allocator as is (keep_freed_memory needs glibc's malloc)"
    return "memory: the system allocator as is (keep_freed_memory=false)"
