"""Every benchmark of this folder in one run, one table, one JSON line (`python -m benchmarks.run_all`).

Each benchmark runs as its own process (clean memory, its own timing) with the same thread count; their last lines
are collected into one summary. `bench_generate` times, in one process on the same weights and prompt, the original
full-prefix algorithm, diffusers' `LLaDA2Pipeline` driving our backbone, our exact-cache `generate()` and our
`generate()` + SPRINT (keep_ratio 0.5); its table (tokens/s, forwards, tokens per forward, peak memory, agreement with
the baseline) is printed as is. `bench_train_step` times a training step with grouped_mm and with the per-expert loop.

    python -m benchmarks.run_all                    # full sizes (about 25 minutes on 2 cores)
    python -m benchmarks.run_all --quick            # smoke sizes (about 2 minutes)
    python -m benchmarks.run_all --only moe,decoder
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = {
    "generate": "benchmarks/bench_generate.py",
    "decoder": "benchmarks/bench_decoder.py",
    "moe": "benchmarks/bench_moe.py",
    "train": "benchmarks/bench_train_step.py",
    "convert": "benchmarks/bench_convert.py",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every benchmark at its smoke-test size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every benchmark")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {list(BENCHMARKS)}")
    return parser.parse_args(argv)


def run_one(name: str, quick: bool, threads) -> dict:
    command = [sys.executable, BENCHMARKS[name]] + (["--quick"] if quick else [])
    if threads and name != "convert":
        command += ["--threads", str(threads)]
    start = time.time()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise SystemExit(f"error: {BENCHMARKS[name]} failed ({result.returncode}): "
                         f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    return {"lines": lines, "seconds": time.time() - start}


def key_values(lines) -> dict:
    out = {}
    for line in lines:
        for part in line.split():
            if "=" in part:
                key, _, value = part.partition("=")
                out[key] = value
    return out


def _number(value):
    return None if value is None else float(value)


def main(argv=None):
    args = parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"error: --only names unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    summary = {"exact_cache_speedup": None, "sprint_extra_speedup": None, "vs_diffusers_speedup": None,
               "moe_vs_dense_time": None, "tokens_identical": None}
    rows = []
    for name in names:
        run = run_one(name, args.quick, args.threads)
        lines = run["lines"]
        if name == "generate":
            values = key_values(lines)
            summary["exact_cache_speedup"] = float(values["speedup_vs_full_prefix"])
            summary["tokens_identical"] = values.get("tokens_identical") == "True"
            summary["sprint_extra_speedup"] = _number(values.get("sprint_extra_speedup"))
            summary["sprint_agreement"] = _number(values.get("sprint_agreement"))
            summary["vs_diffusers_speedup"] = _number(values.get("vs_diffusers_speedup"))
            for key in ("speedup_vs_full_prefix_cpu", "sprint_extra_speedup_cpu", "vs_diffusers_speedup_cpu"):
                summary[key.replace("speedup_vs_full_prefix", "exact_cache_speedup")] = _number(values.get(key))
            if "diffusers_tokens_identical" in values:
                summary["diffusers_tokens_identical"] = values["diffusers_tokens_identical"] == "True"
            table = [line for line in lines if line.startswith(("method", "---", "("))]
            rows.append(("exact block cache vs original full-prefix loop", f"{summary['exact_cache_speedup']:.2f}x"))
            if summary["sprint_extra_speedup"] is not None:
                rows.append(("SPRINT (keep 0.5) on top of the cache", f"{summary['sprint_extra_speedup']:.2f}x "
                             f"({summary['sprint_agreement']:.1%} of tokens as the baseline)"))
            if summary["vs_diffusers_speedup"] is not None:
                rows.append(("exact cache vs diffusers LLaDA2Pipeline", f"{summary['vs_diffusers_speedup']:.2f}x "
                             f"(tokens identical: {summary.get('diffusers_tokens_identical')})"))
        elif name == "decoder":
            decoder = json.loads(lines[-1])
            summary.update(turbo_speedup=decoder["turbo_speedup"], decoder_pipeline_overhead=decoder["pipeline_overhead"])
            rows.append(("turbo vs normal decoder", f"{decoder['turbo_speedup']:.2f}x"))
            rows.append(("decoder pipeline overhead", f"{100 * decoder['pipeline_overhead']:+.1f}%"))
        elif name == "moe":
            moe = json.loads(lines[-1])
            summary["moe_vs_dense_time"] = moe["moe_vs_dense_time"]
            summary["moe_vs_read_floor"] = moe["moe_vs_read_floor"]
            rows.append(("MoE layer vs equal-FLOP dense", f"{moe['moe_vs_dense_time']:.2f}x ({moe['best_backend']})"))
        elif name == "train":
            train = json.loads(lines[-1])
            summary["train_loop_vs_grouped"] = train["loop_vs_grouped"]
            rows.append(("training step, per-expert loop vs grouped_mm", f"{train['loop_vs_grouped']:.2f}x "
                         f"({train['auto_ms']:.0f} ms per step)"))
        elif name == "convert":
            summary["peak_rss_over_shard"] = float(key_values(lines[-1:])["peak_rss_over_shard"])
            rows.append(("conversion peak RSS / largest shard", f"{summary['peak_rss_over_shard']:.2f}"))
        rows.append((f"  ({name}: {run['seconds']:.0f} s)", ""))
    width = max(len(label) for label, _ in rows)
    print(f"machine: {os.cpu_count()} CPUs; {'quick' if args.quick else 'full'} sizes")
    if "generate" in names:
        print("\n".join(table) + "\n")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
