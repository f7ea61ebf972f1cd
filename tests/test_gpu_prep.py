"""The prepared GPU pieces that run on a CPU too: a LoRA training step of bench_train_step, and run_gpu.sh's step
selection (the script itself needs a GPU)."""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def test_bench_train_step_times_a_lora_step():
    result = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--quick", "--threads", "1",
                             "--repeats", "1", "--lora", "default", "--backends", "auto"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # No loop run, so no ratio; peak memory is the CUDA allocator's and is absent on the CPU.
    assert summary["auto_ms"] > 0 and summary["lora"] == "default" and set(summary) == {"auto_ms", "lora"}


def test_run_gpu_script_parses_and_names_the_issue_steps():
    script = REPO_ROOT / "benchmarks" / "run_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for step in ("exactness", "distributed", "fsdp_lora", "lora_mid"):
        assert f"wanted {step}" in text or f"if wanted {step}" in text, step
    assert "check_distributed.py --device cuda" in text and "--lora default" in text
