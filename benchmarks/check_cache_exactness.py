"""Does the block cache stay token-exact on this device and dtype? (`--device cuda` on a GPU.)

For each dtype and attention implementation asked for, on one random model of `bench_generate.py`'s presets:

  tokens   greedy `generate()` with and without the block cache against the full-prefix baseline: forwards and the
           share of generated tokens equal to the baseline's;
  logits   the second generated block's logits (first step, the baseline's canvas) through the cache path (prefix
           written in one forward, then the finished block re-run with the new block) against one full forward:
           the largest absolute difference, the share of equal argmaxes, the largest change of top probability.

  noise    (`--noise-runs N`) the cached run again N times with relative noise of `--noise` (default 2^-8, about one
           bf16 rounding step) added to the final hidden states of every forward: how far forwards and agreement
           move when only rounding-sized differences separate the paths.

Exact arithmetic gives 0 and 100%; rounding that depends on the matrix shapes (a 32-row product against a 576-row
one) shows as small logit differences and, through one flipped decision, as a different token path, whose number of
forwards stays within the spread of the noise runs.

    python benchmarks/check_cache_exactness.py --preset quick                      # CPU, a few seconds per case
    python benchmarks/check_cache_exactness.py --device cuda --preset mid --layers 3
"""

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "src")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

from benchmarks.baseline_full_prefix import full_prefix_generate  # noqa: E402
from benchmarks.bench_generate import MODEL_PRESETS, agreement, build_model  # noqa: E402
from benchmarks.bench_generate import parse_args as generate_args  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=tuple(MODEL_PRESETS), default="quick")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--cases", default="fp32:sdpa,fp32:eager,bf16:sdpa,bf16:eager",
                        help="comma-separated dtype:attention pairs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--noise-runs", type=int, default=0, help="cached runs with noisy hidden states, per case")
    parser.add_argument("--noise", type=float, default=2.0**-8, help="relative noise of those runs")
    args = parser.parse_args(argv)
    if args.gen_length < 64:
        parser.error(f"--gen-length must cover two blocks of 32 (>= 64): the logits check reads the second block; "
                     f"got {args.gen_length}")
    args.cases = [tuple(case.split(":")) for case in args.cases.split(",") if case]
    for dtype, attn in args.cases:
        if dtype not in ("fp32", "bf16") or attn not in ("sdpa", "eager"):
            parser.error(f"--cases: {dtype}:{attn} is not one of fp32|bf16 : sdpa|eager")
    return args


@torch.no_grad()
def check(args, dtype: str, attn: str) -> dict:
    from transformers_llada_uni import BlockDiffusionCache
    from transformers_llada_uni.generation_llada2_uni import _block_causal_mask

    options = ["--preset", args.preset, "--dtype", dtype, "--attn", attn, "--device", args.device,
               "--prompt-length", str(args.prompt_length), "--gen-length", str(args.gen_length)]
    settings = generate_args(options + (["--layers", str(args.layers)] if args.layers else []))
    model = build_model(settings, torch)
    config, device = model.config, args.device
    P, L = settings.prompt_length, settings.block_length
    prompt = torch.randint(0, config.vocab_size - 8, (1, P), generator=torch.Generator().manual_seed(1)).to(device)
    decode = dict(gen_length=settings.gen_length, block_length=L, steps=32, threshold=0.95)
    baseline, baseline_passes = full_prefix_generate(
        model, prompt, **decode, mask_id=config.mask_token_id, eos_id=config.eos_token_id,
        mask_dtype=torch.float32 if dtype == "fp32" else torch.bfloat16)
    row = {"case": f"{dtype} {attn}", "baseline_forwards": baseline_passes, "noise": []}

    def decode_and_compare(use_cache):
        out = model.generate(prompt, **decode, temperature=0.0, use_block_cache=use_cache, return_dict_in_generate=True,
                             mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id)
        return out.num_forward_passes, agreement(out.sequences[:, P:], baseline, torch)

    for name, use_cache in (("cached", True), ("uncached", False)):
        row[f"{name}_forwards"], row[f"{name}_agreement"] = decode_and_compare(use_cache)
    for seed in range(args.noise_runs):
        generator = torch.Generator(device=device).manual_seed(seed)

        def perturb(module, inputs, output):
            noise = torch.randn(output.shape, generator=generator, device=output.device).to(output.dtype)
            return output + output * noise * args.noise

        handle = model.model.norm.register_forward_hook(perturb)
        try:
            row["noise"].append(decode_and_compare(True))
        finally:
            handle.remove()

    # The second block's first step on the baseline's canvas, through the cache and in one full forward.
    canvas = torch.cat([prompt, baseline], 1)
    first, second = P, P + L
    canvas[:, second : second + L] = config.mask_token_id
    total = second + L
    allowed = _block_causal_mask(torch.ones(1, total, dtype=torch.bool, device=device), L)  # generate()'s own mask
    positions = torch.arange(total, device=device)[None]
    full = model(input_ids=canvas[:, :total], attention_mask=allowed, position_ids=positions).logits[:, -L:].float()
    cache = BlockDiffusionCache(total)
    model(input_ids=canvas[:, :second], attention_mask=allowed[..., :second, :second],
          position_ids=positions[:, :second], past_key_values=cache, logits_to_keep=L)
    cache.crop(first)
    cached = model(input_ids=canvas[:, first:total], attention_mask=allowed[..., first:total, :],
                   position_ids=positions[:, first:total], past_key_values=cache, logits_to_keep=L).logits.float()
    top_full, top_cached = full.softmax(-1).amax(-1), cached.softmax(-1).amax(-1)
    row.update(logits_max_abs_diff=(full - cached).abs().max().item(), logits_scale=full.abs().max().item(),
               argmax_agreement=(full.argmax(-1) == cached.argmax(-1)).float().mean().item(),
               top_prob_max_diff=(top_full - top_cached).abs().max().item())
    return row


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, preset {args.preset}" + (f" ({args.layers} layers)" if args.layers else "")
          + f", prompt {args.prompt_length}, gen {args.gen_length}, torch {torch.__version__}")
    exact = True
    for dtype, attn in args.cases:
        row = check(args, dtype, attn)
        exact &= row["cached_agreement"] == 1.0
        print(f"{row['case']:<11} baseline {row['baseline_forwards']} forwards | "
              f"cached {row['cached_forwards']} forwards, "
              f"{row['cached_agreement']:.1%} of tokens | uncached {row['uncached_forwards']} forwards, "
              f"{row['uncached_agreement']:.1%} | block logits max |diff| {row['logits_max_abs_diff']:.2e} "
              f"(max |logit| {row['logits_scale']:.1f}), argmax equal {row['argmax_agreement']:.1%}, "
              f"top-prob max |diff| {row['top_prob_max_diff']:.2e}", flush=True)
        if row["noise"]:
            print(f"{'':<11} cached with noise {args.noise:.2g}: " + ", ".join(
                f"{passes} forwards ({share:.1%})" for passes, share in row["noise"]), flush=True)
    print(f"cache_token_exact={exact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
