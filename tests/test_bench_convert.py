"""The conversion benchmark runs end to end on its quick snapshot and ends with its ratio line; the pread reader
that keeps the converter's memory at one shard gives exactly the tensors safetensors gives.

The memory goal itself (ratio <= 1.5) is the benchmark's business, not a unit test's: this only checks that the
measurement works and reports a sensible number.
"""

import math
import os
import re
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import REPO_ROOT, offline_env, require_parity_dir
from conversion.checkpoint_io import SourceCheckpoint


def _raw_bytes(tensor):
    return tensor.reshape(-1).view(torch.uint8)


def test_source_checkpoint_reads_what_safetensors_reads(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(3, 5, 7, generator=generator).to(torch.bfloat16),
        "fp32": torch.randn(4, 9, generator=generator),
        "scalar": torch.tensor(1.5),
        "empty": torch.empty(0, 4),
        "int64": torch.arange(-5, 6),
        "bool": torch.tensor([True, False, True]),
        "fp8": torch.randn(8, 8, generator=generator).to(torch.float8_e4m3fn),
        "odd_bytes": torch.arange(7, dtype=torch.uint8),  # leaves the next tensor's data unaligned
        "after_odd": torch.randn(5, generator=generator, dtype=torch.float64),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with SourceCheckpoint(tmp_path) as source, safe_open(str(tmp_path / "model.safetensors"), "pt") as reference:
        assert source._fds  # the pread path (little-endian hosts), not safetensors' memory map
        for key, tensor in tensors.items():
            got, want = source.get(key), reference.get_tensor(key)
            assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous(), key
            assert torch.equal(_raw_bytes(got), _raw_bytes(want)), key
            got.fill_(0)  # memory of its own: writable


def test_bench_convert_quick_runs(tmp_path):
    require_parity_dir()
    env = offline_env()
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "benchmarks/bench_convert.py", "--quick", "--workdir", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"peak_rss_over_shard=(\S+)", last)
    assert match, last
    ratio = float(match.group(1))
    assert math.isfinite(ratio) and ratio > 0
    assert os.listdir(tmp_path) == []  # the snapshot and the converted folder are removed without --keep
