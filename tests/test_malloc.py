"""``train.keep_freed_memory``: glibc's malloc keeps freed memory, so a step's large tensors
reuse pages already touched instead of faulting in fresh ones."""

import resource

import pytest
import torch

from protege.policies import malloc

from test_cli import run

pytestmark = pytest.mark.skipif(not malloc.available(), reason="needs glibc's malloc")

N = 16 * 2**20  # 64 MiB of float32: above glibc's largest mmap threshold (32 MiB)


def faults_of_a_fresh_large_tensor() -> int:
    """Minor page faults of allocating and filling a 64 MiB tensor after such tensors were
    allocated, filled and freed before (as a training step's were in the steps before): the least
    over four, since the first ones may find the freed block split by smaller allocations in
    between and grow the heap instead."""
    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(N).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(faults)


def test_freed_memory_is_reused_without_page_faults_and_the_default_comes_back():
    pages = N * 4 // 4096
    assert faults_of_a_fresh_large_tensor() > pages // 2  # glibc maps each afresh: a fault per page
    with malloc.keep_freed_memory() as kept:
        assert kept
        assert faults_of_a_fresh_large_tensor() < pages // 20
    assert faults_of_a_fresh_large_tensor() > pages // 2  # restored on exit
    with malloc.keep_freed_memory(False) as kept:
        assert not kept
        assert faults_of_a_fresh_large_tensor() > pages // 2


def test_a_bad_keep_freed_memory_setting_is_refused_before_the_data_loads(tmp_path):
    p = run("protege-train", "train.keep_freed_memory=sometimes", f"dataset={tmp_path / 'missing.zarr'}", check=False, cwd=tmp_path)
    out = p.stderr + p.stdout
    assert p.returncode == 2 and "train.keep_freed_memory must be true or false" in out and "Traceback" not in out, out
