"""Decoder benchmark: normal vs turbo sampler, and the pipeline's overhead over bare transformer calls (CPU).

On one small random decoder (SigVQ embedder + Z-Image transformer + VAE, built in-process), in one run:

  normal   `LLaDA2UniDecoderPipeline` with the normal sampler (49 evaluations of a CFG batch of 2 by default)
  turbo    the same weights with the turbo sampler (8 evaluations, no CFG)
  raw      the transformer alone, called exactly as the normal pipeline calls it (same inputs, same count), in a
           bare Python loop: what a hand-written sampler could not avoid

Every timed pipeline run stops at the latents (`output_type="latent"`), so the overhead compares like with like.
Lines `key=value`; the last line is one JSON object with `normal_calls`, `turbo_calls`, `turbo_speedup`
(normal time / turbo time) and `pipeline_overhead` (normal pipeline time / raw time - 1; target < 0.05).

    python benchmarks/bench_decoder.py            # grid 8 x 8 tokens, resolution_multiplier 2 (256 px)
    python benchmarks/bench_decoder.py --quick    # grid 4 x 4: a smoke test (a few seconds)
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

from benchmarks.bench_generate import tune_malloc  # noqa: E402

PRESETS = {
    "default": dict(grid=8, dim=256, heads=4, layers=4, vocab=1024, cap_dim=256, vae=(32, 64, 64, 64)),
    "quick": dict(grid=4, dim=64, heads=2, layers=2, vocab=256, cap_dim=64, vae=(8, 8, 16, 16)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny decoder, 4 x 4 grid, 1 repeat")
    parser.add_argument("--grid", type=int, default=None, help="token grid side (default 8; --quick 4)")
    parser.add_argument("--resolution-multiplier", type=int, default=2)
    parser.add_argument("--normal-steps", type=int, default=49, help="normal sampler evaluations (original: 49)")
    parser.add_argument("--turbo-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs each, interleaved (best is kept; "
                        "default 2, --quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...); timings synchronise on a GPU")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc's malloc thresholds alone (by default freed memory stays mapped, as in "
                        "bench_generate.py, so neither side pays a page-fault storm per call)")
    return parser.parse_args(argv)


def build_components(preset: dict, seed: int = 0):
    """Random decoder parts of the preset's size, built by the shapes model factory (same classes as the release)."""
    from examples.shapes.factory import ShapesModelSizes, build_pixel_side

    sizes = ShapesModelSizes(codebook_size=preset["vocab"], cap_dim=preset["cap_dim"], decoder_dim=preset["dim"],
                             decoder_layers=preset["layers"], decoder_heads=preset["heads"], vae_channels=preset["vae"])
    parts = build_pixel_side(sizes, seed=seed)
    schedulers = {"normal": parts["scheduler"], "turbo": parts["scheduler_turbo"]}
    return parts["semantic_embedder"].eval(), parts["transformer"].eval(), parts["vae"].eval(), schedulers


def count_calls(module):
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_pre_hook(hook)
    return calls


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    preset = dict(PRESETS["quick" if args.quick else "default"])
    if args.grid:
        preset["grid"] = args.grid
    repeats = args.repeats or (1 if args.quick else 2)
    from diffusers_llada_uni import LLaDA2UniDecoderPipeline

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    embedder, transformer, vae, schedulers = build_components(preset)
    embedder, transformer, vae = (part.to(device) for part in (embedder, transformer, vae))
    if dtype != torch.float32:
        embedder, transformer, vae = (part.to(dtype) for part in (embedder, transformer, vae))
    pipes = {}
    for name, scheduler in schedulers.items():
        pipes[name] = LLaDA2UniDecoderPipeline(embedder, transformer, vae, scheduler)
        pipes[name].set_progress_bar_config(disable=True)
    calls = count_calls(transformer)
    grid = (preset["grid"], preset["grid"])
    codes = torch.randint(0, preset["vocab"], (1, grid[0] * grid[1]), generator=torch.Generator().manual_seed(1))
    codes = codes.to(device)
    rm = args.resolution_multiplier
    noise = torch.randn(pipes["normal"].latent_shape(1, grid, rm), generator=torch.Generator().manual_seed(2))
    noise = noise.to(device, dtype)
    steps = {"normal": args.normal_steps, "turbo": args.turbo_steps}

    def run_pipe(name):
        return pipes[name](codes, grid, latents=noise, num_inference_steps=steps[name], resolution_multiplier=rm,
                           generator=torch.Generator().manual_seed(3), output_type="latent").images

    with torch.no_grad():
        cap = embedder(codes, grid)
    samples = [noise[0].unsqueeze(1)] * 2
    captions = [cap[0], torch.zeros_like(cap[0])]

    def run_raw():
        schedule = torch.linspace(0, 1, steps["normal"] + 1, device=device, dtype=dtype)
        with torch.no_grad():
            for t in schedule[:-1]:
                transformer(samples, t.expand(2), captions, return_dict=False)

    methods = {"normal": lambda: run_pipe("normal"), "turbo": lambda: run_pipe("turbo"), "raw": run_raw}
    counted = {}
    for name, fn in methods.items():  # warm-up, and the model-call counts
        calls[0] = 0
        fn()
        counted[name] = calls[0]
    best = {name: float("inf") for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)

    side = 16 * rm * preset["grid"]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"malloc tuning {'on' if malloc_tuned else 'off'}, {args.dtype} on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"decoder: dim {preset['dim']}, {preset['layers']} layers, grid {grid[0]}x{grid[1]} tokens -> "
          f"{side}x{side} px (resolution_multiplier {rm}), best of {repeats}")
    for name in methods:
        print(f"{name}_calls={counted[name]} {name}_seconds={best[name]:.4f}")
    result = {
        "normal_calls": counted["normal"],
        "turbo_calls": counted["turbo"],
        "turbo_speedup": round(best["normal"] / best["turbo"], 3),
        "pipeline_overhead": round(best["normal"] / best["raw"] - 1, 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
