"""The benchmark's in-repo baseline is the original algorithm (it reproduces the recorded runs), and the benchmark
scripts run end to end: identical tokens for the exact methods (our cache, the baseline, diffusers' LLaDA2Pipeline on
our backbone), a SPRINT row, and one JSON line from run_all."""

import json
import subprocess
import sys

import torch

from benchmarks.baseline_full_prefix import full_prefix_generate
from conftest import PARITY_DIR, REPO_ROOT


def test_baseline_reproduces_the_original_runs(converted):
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration

    model = LLaDA2UniForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    fixture = json.loads((PARITY_DIR / "expected" / "llm_generate.json").read_text())
    prompt = torch.tensor([fixture["prompt_ids"]])
    for run in fixture["runs_greedy"]:
        ids, forwards = full_prefix_generate(
            model, prompt, gen_length=run["gen_length"], block_length=run["block_length"], steps=run["steps"],
            threshold=run["threshold"], mask_id=fixture["mask_id"], eos_id=fixture["eos_id"],
        )
        assert torch.as_tensor(ids).reshape(-1).tolist() == run["output_ids"]
        assert forwards == run["num_forward_calls"]


def test_bench_generate_quick_runs():
    result = subprocess.run([sys.executable, "benchmarks/bench_generate.py", "--quick", "--threads", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "tokens_identical=True" in lines and "diffusers_tokens_identical=True" in lines
    assert lines[-1].startswith("speedup_vs_full_prefix=") and float(lines[-1].split("=")[1]) > 0
    values = dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)
    assert float(values["sprint_extra_speedup"]) > 0 and float(values["vs_diffusers_speedup"]) > 0
    assert 0.0 <= float(values["sprint_agreement"]) <= 1.0
    rows = [line for line in lines if line.startswith(("(a)", "(b)", "(c)", "(d)", "(e)"))]
    assert len(rows) == 5  # exact cache, no cache, baseline, SPRINT, diffusers


def test_bench_decoder_quick_runs():
    result = subprocess.run([sys.executable, "benchmarks/bench_decoder.py", "--quick", "--threads", "1",
                             "--normal-steps", "5", "--turbo-steps", "2"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["normal_calls"] == 5 and summary["turbo_calls"] == 2
    assert summary["turbo_speedup"] > 1 and summary["pipeline_overhead"] > -0.5


def test_bench_moe_quick_runs():
    result = subprocess.run([sys.executable, "benchmarks/bench_moe.py", "--quick", "--threads", "1", "--repeats", "2"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["moe_vs_dense_time"] > 0 and summary["best_backend"] in ("grouped_mm", "loop")


def test_run_all_collects_one_json_line():
    result = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--quick", "--threads", "1", "--only",
                             "moe,generate"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"exact_cache_speedup", "sprint_extra_speedup", "vs_diffusers_speedup", "moe_vs_dense_time",
            "tokens_identical"} <= set(summary)
    assert summary["tokens_identical"] is True and summary["exact_cache_speedup"] > 0
    assert summary["sprint_extra_speedup"] > 0 and summary["vs_diffusers_speedup"] > 0
    assert summary["diffusers_tokens_identical"] is True


def test_check_cache_exactness_finds_the_cache_exact_on_cpu():
    result = subprocess.run([sys.executable, "benchmarks/check_cache_exactness.py", "--threads", "1", "--prompt-length",
                             "64", "--gen-length", "64", "--cases", "fp32:sdpa,bf16:eager", "--noise-runs", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "cache_token_exact=True"
    rows = [line for line in lines if line.startswith(("fp32", "bf16"))]
    assert len(rows) == 2 and all("100.0% of tokens" in row and "argmax equal 100.0%" in row for row in rows)
    assert sum("cached with noise" in line for line in lines) == 2


def test_bench_train_step_quick_runs():
    result = subprocess.run([sys.executable, "benchmarks/bench_train_step.py", "--quick", "--threads", "1",
                             "--repeats", "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["auto_ms"] > 0 and summary["loop_ms"] > 0 and summary["loop_vs_grouped"] > 0
