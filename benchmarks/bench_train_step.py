"""One training step (masked-diffusion loss, forward + backward) of bench_generate's random MoE, per experts backend.

`auto` runs the routed experts through `F.grouped_mm` under autograd where torch differentiates it (torch 2.13 does
on CPU); `loop` runs one pair of matmuls per expert hit. Same weights, same batch, best of `--repeats` after a
warm-up step.

    python benchmarks/bench_train_step.py                  # the 73.8M default model, batch 2 x 256, fp32
    python benchmarks/bench_train_step.py --quick          # the tiny model (smoke test)
    python benchmarks/bench_train_step.py --device cuda --preset mid --dtype bf16 --lora default --backends auto
                                                           # a LoRA step on a GPU: time and peak memory

The last line is one JSON object with the milliseconds per step of each backend and `loop_vs_grouped` (when both
ran). `--lora PRESET` puts the adapters of that `get_lora_model` preset on the model and times forward, backward and
an AdamW step of the adapters; on CUDA `peak_mib` is the allocator's peak during one such step (weights, adapters,
their optimizer state, activations) and `weights_mib` what was allocated before it.
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="bench_generate's model preset (default / mid / quick)")
    parser.add_argument("--lora", default=None, metavar="PRESET", help="train LoRA adapters of this preset instead")
    parser.add_argument("--backends", default="auto,loop", help="comma-separated experts backends to time")
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
    flags = (["--quick"] if args.quick else []) + ["--dtype", args.dtype, "--device", args.device]
    settings = model_args(flags + (["--preset", args.preset] if args.preset else []))
    cuda = torch.device(args.device).type == "cuda"
    times, memory = {}, {}
    for backend in args.backends.split(","):
        model = build_model(settings, torch).train()
        model.set_experts_backend(backend)
        optimizer = None
        if args.lora:
            from transformers_llada_uni.peft_llada2_uni import get_lora_model

            model = get_lora_model(model, args.lora)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab - 8, (args.batch, args.length), generator=torch.Generator().manual_seed(0))
        ids = ids.to(args.device)

        def step():
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            if optimizer is not None:
                optimizer.step()
            if cuda:
                torch.cuda.synchronize()

        step()  # warm-up; also creates the optimizer state, so the peak below is a steady-state step's
        if cuda:
            memory["weights_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        times[backend] = best
        if cuda:
            memory["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        params = sum(p.numel() for p in model.parameters())
        del model, optimizer
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {params / 1e6:.1f}M-parameter random MoE, "
          f"batch {args.batch} x {args.length}, {args.dtype}, {args.device}, best of {args.repeats}"
          + (f", LoRA preset {args.lora}" if args.lora else ""))
    for backend, seconds in times.items():
        print(f"{backend}: {seconds * 1e3:.0f} ms per step")
    summary = {f"{backend}_ms": round(seconds * 1e3, 1) for backend, seconds in times.items()}
    if "auto" in times and "loop" in times:
        summary["loop_vs_grouped"] = round(times["loop"] / times["auto"], 3)
    if args.lora:
        summary["lora"] = args.lora
    summary.update(memory)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
