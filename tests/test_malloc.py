"""``train.keep_freed_memory``: glibc's malloc keeps freed memory, so a step's large tensors
reuse pages already touched instead of faulting in fresh ones."""

import json
import subprocess
import sys

import pytest

from protege.policies import malloc

from test_cli import run

pytestmark = pytest.mark.skipif(not malloc.available(), reason="needs glibc's malloc")

N = 16 * 2**20  # 64 MiB of float32: above glibc's largest mmap threshold (32 MiB)

# Run in a fresh interpreter: in this one, earlier tests (a trainer run in-process keeps freed
# memory too) leave free heap chunks large enough to serve a 64 MiB tensor without mmap whatever
# the settings, and a test of the settings would then pass or fail on the suite's order.
SCRIPT = f"""
import ctypes, json, resource, torch
from protege.policies import malloc

def faults(n={N}, times=24):
    # minor page faults of allocating and filling an n-float tensor after such tensors were
    # allocated, filled and freed (as a training step's were in the steps before); the least
    # over many: with freed memory kept, the first few (4-9 measured in fresh processes) grow
    # the heap instead, each freed block, cut to the aligned size, a little short of the next
    # aligned request until freed neighbours merge; then one block is reused
    out = []
    for _ in range(times):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(n).fill_(1.0)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(out)

class Mallinfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

def larger_than_the_heaps_free_memory():
    # after the block, the heap keeps free blocks (trimmed of their pages) that serve any request
    # that fits, whatever the settings; only a larger one shows whether glibc maps it afresh
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    return (libc.mallinfo2().fordblks // 4 // {N} + 1) * {N}

r = {{"before": faults()}}
with malloc.keep_freed_memory() as kept:
    r["kept"], r["inside"] = kept, faults()
n = larger_than_the_heaps_free_memory()
r["after_size_mib"] = n * 4 >> 20
r["after"] = faults(n, 4)
with malloc.keep_freed_memory(False) as kept:
    r["off_kept"], r["off"] = kept, faults(n, 4)
print(json.dumps(r))
"""


def test_freed_memory_is_reused_without_page_faults_and_the_default_comes_back():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    pages = N * 4 // 4096
    assert r["before"] > pages // 2, r  # glibc maps each afresh: a fault per page
    assert r["kept"] is True and r["inside"] < pages // 20, r
    pages_after = r["after_size_mib"] * 2**20 // 4096
    assert r["after"] > pages_after // 2, r  # glibc's mapping of large blocks restored on exit
    assert r["off_kept"] is False and r["off"] > pages_after // 2, r


def test_a_bad_keep_freed_memory_setting_is_refused_before_the_data_loads(tmp_path):
    p = run("protege-train", "train.keep_freed_memory=sometimes", f"dataset={tmp_path / 'missing.zarr'}", check=False, cwd=tmp_path)
    out = p.stderr + p.stdout
    assert p.returncode == 2 and "train.keep_freed_memory must be true or false" in out and "Traceback" not in out, out


def test_the_setting_is_the_cpus_only():
    with malloc.keep_freed_memory(True, "cuda:0") as kept:
        assert kept is False
    assert "not cuda:0" in malloc.describe(kept, True, "cuda:0")
    with malloc.keep_freed_memory(True, "cpu") as kept:
        assert kept is True
