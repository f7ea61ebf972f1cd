"""One training step (masked-diffusion loss, forward + backward) of bench_generate's random MoE, per experts backend.

`auto` runs the routed experts through `F.grouped_mm` under autograd where torch differentiates it (torch 2.13 does
on CPU); `loop` runs one pair of matmuls per expert hit. Same weights, same batch, best of `--repeats` after a
warm-up step.

    python benchmarks/bench_train_step.py                  # the 73.8M default model, batch 2 x 256, fp32
    python benchmarks/bench_train_step.py --quick          # the tiny model (smoke test)

The last line is one JSON object with the milliseconds per step of each backend and `loop_vs_grouped`.
"""

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "src")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

from benchmarks.bench_generate import build_model, tune_malloc  # noqa: E402
from benchmarks.bench_generate import parse_args as model_args  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model, batch 2 x 64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=None, help="tokens per sample (default 256; --quick 64)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    args.length = args.length or (64 if args.quick else 256)
    if args.batch < 1 or args.length < 2:
        parser.error("--batch must be >= 1 and --length >= 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()
    settings = model_args((["--quick"] if args.quick else []) + ["--dtype", args.dtype])
    times = {}
    for backend in ("auto", "loop"):
        model = build_model(settings, torch).train()
        model.set_experts_backend(backend)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab - 8, (args.batch, args.length), generator=torch.Generator().manual_seed(0))

        def step():
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()

        step()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        times[backend] = best
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {params / 1e6:.1f}M-parameter random MoE, "
          f"batch {args.batch} x {args.length}, {args.dtype}, best of {args.repeats}")
    for backend, seconds in times.items():
        print(f"{backend}: {seconds * 1e3:.0f} ms per step")
    print(json.dumps({"auto_ms": round(times["auto"] * 1e3, 1), "loop_ms": round(times["loop"] * 1e3, 1),
                      "loop_vs_grouped": round(times["loop"] / times["auto"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
