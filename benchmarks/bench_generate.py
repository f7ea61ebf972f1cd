"""Block-cached `generate()` vs the original full-prefix LLaDA2.0 algorithm, SPRINT and diffusers' `LLaDA2Pipeline`,
on a small random LLaDA2 MoE (CPU; `--device cuda --preset mid --dtype bf16` for a GPU).

Five ways to run the same greedy block-diffusion decoding, on the same weights and prompt, in one process:

  (a) cached     `model.generate(..., use_block_cache=True)`: finished blocks' keys/values are kept; each step
                 runs only the active block (the first step of a block also re-runs the block just finished).
  (b) uncached   `model.generate(..., use_block_cache=False)`: the same loop, re-running the whole prefix.
  (c) baseline   `benchmarks/baseline_full_prefix.py`: the original algorithm (full prefix, additive 0/-inf mask,
                 logits of every position, then the last block's), the thing we compare against.
  (d) sprint     (a) + `sprint={"keep_ratio": 0.5}`: pruned prefix and adaptive unmasking (approximate).
  (e) diffusers  diffusers' `LLaDA2Pipeline` + `BlockRefinementScheduler` driving the same model through
                 `benchmarks/diffusers_adapter.py` (greedy, editing off: the LLaDA2.0 algorithm, full prefix).

(a), (b), (c) and (e) must produce identical token ids (`tokens_identical=True`); SPRINT's agreement with the baseline
is reported as a share of tokens. After the timed runs each method runs once more for its peak memory (the growth of
the process's resident set over what was resident before, after returning freed memory to the OS). The last line
printed is `speedup_vs_full_prefix=<baseline wall time / cached wall time>`; the lines before it hold
`sprint_extra_speedup=<cached / sprint>` and `vs_diffusers_speedup=<diffusers / cached>`.

    python benchmarks/bench_generate.py                 # prompt 512, gen 256, block 32, steps 32, threshold 0.95
    python benchmarks/bench_generate.py --quick         # tiny model, prompt 64, gen 64: a smoke test (< 20 s)
    python benchmarks/bench_generate.py --profile       # + where the time of the cached path goes
    python benchmarks/bench_generate.py --methods cached,sprint --sprint-keep-ratio 0.25
    python benchmarks/bench_generate.py --device cuda --preset mid --dtype bf16   # a 4.3B-parameter MoE on a GPU
"""

import argparse
import ctypes
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Model shapes. head_dim is 64, the first layer is dense, one shared expert. init_std is the N(0, std) of every weight
# (the config's initializer_range); logit_std is the std of the logits of a unit-RMS hidden state (the LM head scale).
MODEL_PRESETS = {
    "default": dict(hidden=512, layers=6, intermediate=1024, experts=64, top_k=8, n_group=8, topk_group=4,
                    moe_intermediate=128, heads=8, kv_heads=2, vocab=4096, init_std=0.08, logit_std=13.0),
    # A mid-size MoE for a GPU (run it with --device cuda --dtype bf16): LLaDA2.0-mini's expert shape (256 experts of
    # 512, top-8 in 8 groups, hidden 2048), 6 layers instead of 20 and a smaller vocabulary; about 4.3B parameters.
    "mid": dict(hidden=2048, layers=6, intermediate=5120, experts=256, top_k=8, n_group=8, topk_group=4,
                moe_intermediate=512, heads=32, kv_heads=4, vocab=32768, init_std=0.04, logit_std=13.0),
    "quick": dict(hidden=128, layers=3, intermediate=256, experts=16, top_k=4, n_group=4, topk_group=2,
                  moe_intermediate=64, heads=4, kv_heads=2, vocab=1024, init_std=0.08, logit_std=13.0),
}


METHODS = ("cached", "uncached", "baseline", "sprint", "diffusers")
EXACT_METHODS = ("cached", "uncached", "baseline", "diffusers")  # these must agree token for token


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, prompt 64, gen 64, 1 repeat (smoke test)")
    parser.add_argument("--prompt-length", type=int, default=None, help="prompt tokens (default 512; --quick 64)")
    parser.add_argument("--gen-length", type=int, default=None, help="tokens to generate (default 256; --quick 64)")
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32, help="most denoising forwards per block")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method, interleaved, after the "
                        "warm-up (the best is reported; default 2, --quick 1)")
    parser.add_argument("--full-warmup", action="store_true",
                        help="warm up with a complete run of each method (default: a one-block run each plus one "
                        "forward over the whole canvas)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompt")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--sprint-keep-ratio", type=float, default=0.5, help="SPRINT keep_ratio of method (d)")
    parser.add_argument("--sprint-strategy", default="low_confidence",
                        help="SPRINT unmasking strategy: low_confidence, top_k_margin or neg_entropy")
    parser.add_argument("--no-memory", action="store_true", help="skip the extra run per method that measures memory")
    parser.add_argument("--experts-backend", choices=("auto", "grouped_mm", "loop"), default="auto")
    parser.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="attention implementation")
    parser.add_argument("--preset", choices=tuple(MODEL_PRESETS), default=None,
                        help="model shape preset (default: 'default'; --quick: 'quick'; 'mid' is for a GPU)")
    parser.add_argument("--baseline-logits-to-keep", action="store_true",
                        help="let the baseline project only the last block to logits (the original projects the "
                        "whole prefix; this makes the baseline cheaper)")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default malloc settings (by default freed memory is kept mapped, so "
                        "big activations do not page-fault afresh on every forward)")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one cached run (torch.profiler op table + Python hot spots)")
    group = parser.add_argument_group("model shape (overrides the preset)")
    for name in MODEL_PRESETS["default"]:
        kind = float if name in ("init_std", "logit_std") else int
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    args = parser.parse_args(argv)
    args.prompt_length = args.prompt_length or (64 if args.quick else 512)
    args.gen_length = args.gen_length or (64 if args.quick else 256)
    args.repeats = args.repeats or (1 if args.quick else 2)
    preset = dict(MODEL_PRESETS[args.preset or ("quick" if args.quick else "default")])
    for name in preset:
        if getattr(args, name) is not None:
            preset[name] = getattr(args, name)
    args.shape = preset
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device: expected cpu or cuda[:N]; got {args.device!r}.")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}.")
    return args


def tune_malloc():
    """Keep freed heap memory mapped (glibc): avoids a page fault storm per forward on this VM. Best effort."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # the largest fixed value glibc accepts
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    return bool(ok)


def peak_memory_mib(run, torch):
    """Growth of the resident set (MiB) while `run()` runs, over what is resident once freed memory has been returned
    to the OS (glibc `malloc_trim`; the kernel's high-water mark is reset through /proc/self/clear_refs). None when
    the platform does not allow it."""
    import gc

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        return None

    try:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        run()
        return status("VmHWM") - before
    except (OSError, TypeError):
        return None


def agreement(ids, reference, torch) -> float:
    """Share of `reference`'s generated tokens that `ids` repeats at the same positions (1.0 when identical)."""
    if ids.shape == reference.shape and torch.equal(ids, reference):
        return 1.0
    width = min(ids.shape[1], reference.shape[1])
    return (ids[:, :width] == reference[:, :width]).float().sum().item() / max(reference.shape[1], 1)


def cuda_peak_memory_mib(run, torch):
    """Peak of the CUDA caching allocator's allocated memory (MiB) during `run()`, over what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


class CpuMonitor:
    """Share of the machine's CPU time used by other processes between start() and stop() (from /proc/stat)."""

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle, os.times()

    def start(self):
        self.begin = self._read()

    def stop(self):
        end = self._read()
        if self.begin is None or end is None:
            return None
        total = end[0] - self.begin[0]
        busy = total - (end[1] - self.begin[1])
        ticks = os.sysconf("SC_CLK_TCK")
        own = ((end[2].user - self.begin[2].user) + (end[2].system - self.begin[2].system)) * ticks
        return max(0.0, (busy - own) / total) if total > 0 else None


def build_model(args, torch):
    from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

    s = args.shape
    vocab = s["vocab"]
    config = LLaDA2MoeConfig(
        vocab_size=vocab,
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        moe_intermediate_size=s["moe_intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        head_dim=64,
        first_k_dense_replace=1,
        num_experts=s["experts"],
        num_experts_per_tok=s["top_k"],
        num_shared_experts=1,
        n_group=s["n_group"],
        topk_group=s["topk_group"],
        routed_scaling_factor=2.5,
        max_position_embeddings=max(2048, args.prompt_length + args.gen_length + args.block_length),
        bos_token_id=vocab - 4,
        eos_token_id=vocab - 3,
        pad_token_id=vocab - 3,
        mask_token_id=vocab - 1,
        block_length=args.block_length,
        initializer_range=s["init_std"],
        attn_implementation=args.attn,
    )
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # initialised where it runs (a GPU fills a mid-size model in a blink)
        model = LLaDA2MoeForCausalLM(config).eval()
    with torch.no_grad():
        # A sharp head (logit std `logit_std` instead of ~init_std * sqrt(hidden)), so that some predictions clear the
        # threshold (multi-token steps) and others do not: the runs mix threshold and quota decisions as a trained
        # model's do (about 3 tokens per forward with the default preset).
        model.lm_head.weight.normal_(0.0, s["logit_std"] / s["hidden"] ** 0.5)
        # Never predict EOS or the mask: every run decodes exactly gen_length tokens (fixed work to compare).
        model.lm_head.weight[[config.eos_token_id, config.mask_token_id]] = 0.0
        for module in model.modules():  # a little routing bias, like the released checkpoints
            if hasattr(module, "expert_bias"):
                module.expert_bias.normal_(0.0, 0.1)
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.set_experts_backend(args.experts_backend)
    return model


def main(argv=None):
    args = parse_args(argv)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()

    import torch
    import transformers

    from benchmarks.baseline_full_prefix import full_prefix_generate
    from benchmarks.diffusers_adapter import diffusers_generate

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args, torch)
    config = model.config
    generator = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(0, config.vocab_size - 8, (1, args.prompt_length), generator=generator).to(args.device)
    cuda = args.device.startswith("cuda")

    def synchronize():
        if cuda:
            torch.cuda.synchronize(args.device)
    P, G, L = args.prompt_length, args.gen_length, args.block_length
    common = dict(gen_length=G, block_length=L, steps=args.steps, threshold=args.threshold)

    def run_ours(use_cache, settings, sprint=None):
        out = model.generate(
            prompt, **settings, temperature=0.0, use_block_cache=use_cache, return_dict_in_generate=True,
            mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id, sprint=sprint,
        )
        return out.sequences[:, P:], out.num_forward_passes

    sprint = {"keep_ratio": args.sprint_keep_ratio, "strategy": args.sprint_strategy}

    def run_baseline(settings):
        return full_prefix_generate(
            model, prompt, **settings, mask_id=config.mask_token_id, eos_id=config.eos_token_id,
            mask_dtype=torch.float32 if args.dtype == "fp32" else torch.bfloat16,
            logits_to_keep=L if args.baseline_logits_to_keep else None,
        )

    runners = {
        "cached": lambda settings: run_ours(True, settings),
        "uncached": lambda settings: run_ours(False, settings),
        "baseline": run_baseline,
        "sprint": lambda settings: run_ours(True, settings, sprint),
        "diffusers": lambda settings: diffusers_generate(model, prompt, **settings, mask_id=config.mask_token_id,
                                                         eos_id=config.eos_token_id),
    }
    labels = {
        "cached": "(a) generate, block cache",
        "uncached": "(b) generate, no cache",
        "baseline": "(c) full-prefix baseline",
        "sprint": f"(d) (a) + SPRINT keep {args.sprint_keep_ratio:g}",
        "diffusers": "(e) diffusers LLaDA2Pipeline",
    }

    s = args.shape
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"CPU {cpu_model()} ({os.cpu_count()} cores), malloc tuning {'on' if malloc_tuned else 'off'}")
    if cuda:
        print(f"device {args.device}: {torch.cuda.get_device_name(args.device)}, torch CUDA {torch.version.cuda}; "
              "peak MiB below is the CUDA allocator's peak, CPU s is the host's time")
    print(f"model: {params / 1e6:.1f}M params, hidden {s['hidden']}, {s['layers']} layers (first dense), "
          f"{s['experts']} experts top-{s['top_k']} ({s['n_group']} groups, top-{s['topk_group']}) + 1 shared, "
          f"moe_intermediate {s['moe_intermediate']}, heads {s['heads']}/{s['kv_heads']} x 64, vocab {s['vocab']}, "
          f"logit std {s['logit_std']}, {args.dtype}, {args.attn} attention, experts backend {args.experts_backend}")
    print(f"decode: prompt {P}, gen {G}, block {L}, steps {args.steps}, threshold {args.threshold}, greedy; "
          f"{args.repeats} timed run(s) per method after a warm-up, best reported", flush=True)
    if "sprint" in args.methods:
        print(f"SPRINT: {sprint} (other settings: SprintConfig defaults)")
    if "diffusers" in args.methods:
        import diffusers

        print(f"diffusers {diffusers.__version__}: LLaDA2Pipeline + BlockRefinementScheduler, greedy, editing off")

    # Warm-up (lazy initialisation, thread pool, allocator growth): every method once on a one-block generation,
    # then one forward over the whole canvas so that the largest activations have been allocated once.
    warm_common = dict(common, gen_length=min(G, L) if not args.full_warmup else G)
    for name in args.methods:
        runners[name](warm_common)
    if not args.full_warmup:
        total = -(-(P + G) // L) * L
        with torch.no_grad():
            device = args.device
            model(input_ids=torch.full((1, total), config.mask_token_id, device=device),
                  position_ids=torch.arange(total, device=device)[None],
                  attention_mask=torch.ones(1, 1, total, total, dtype=torch.bool, device=device))

    # Timed runs, interleaved (a, b, c, a, b, c, ...) so that a burst of load from other processes does not hit a
    # single method; the best run of each method is reported.
    times = {name: [] for name in args.methods}
    cpu_times = {name: [] for name in args.methods}
    background = {name: [] for name in args.methods}
    results, outputs = {}, {}
    stable = True
    monitor = CpuMonitor()
    for _ in range(args.repeats):
        for name in args.methods:
            monitor.start()
            synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            ids, passes = runners[name](common)
            synchronize()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
            background[name].append(monitor.stop())
            outputs.setdefault(name, ids)
            if not torch.equal(ids, outputs[name]):
                stable = False
                print(f"  {name}: this run gave other ids than its first run")
            results[name] = dict(passes=passes, tokens=ids.shape[1])
            load = background[name][-1]
            print(f"  {name}: {times[name][-1]:.2f} s ({cpu_times[name][-1]:.2f} s CPU), {passes} forwards"
                  + (f", other processes used {load:.0%} of the CPU" if load is not None else ""), flush=True)
    for name in args.methods:
        best = min(range(len(times[name])), key=times[name].__getitem__)
        results[name].update(seconds=times[name][best], background=background[name][best],
                             cpu=min(cpu_times[name]))

    exact = [name for name in args.methods if name in EXACT_METHODS]
    reference = outputs["baseline" if "baseline" in outputs else (exact or args.methods)[0]]
    identical = stable and all(torch.equal(outputs[name], reference) for name in exact)
    for name in args.methods:
        results[name]["agreement"] = agreement(outputs[name], reference, torch)
    for name in args.methods if not args.no_memory else ():
        measure = cuda_peak_memory_mib if cuda else peak_memory_mib
        results[name]["memory"] = measure(lambda: runners[name](common), torch)

    if args.profile and "cached" in args.methods:
        profile_cached(lambda: runners["cached"](common), torch)

    print()
    header = (f"{'method':<32}{'wall s':>9}{'CPU s':>8}{'tok/s':>9}{'forwards':>10}{'tok/fwd':>9}{'ms/fwd':>9}{'peak MiB':>10}"
              f"{'agree':>8}{'others':>8}")
    print(header)
    print("-" * len(header))
    for name in args.methods:
        r = results[name]
        memory = r.get("memory")
        print(f"{labels[name]:<32}{r['seconds']:>9.2f}{r['cpu']:>8.2f}{r['tokens'] / r['seconds']:>9.1f}{r['passes']:>10d}"
              f"{r['tokens'] / r['passes']:>9.2f}{1000 * r['seconds'] / r['passes']:>9.1f}"
              + (f"{memory:>10.1f}" if memory is not None else f"{'?':>10}")
              + f"{r['agreement']:>8.1%}"
              + (f"{r['background']:>8.0%}" if r["background"] is not None else f"{'?':>8}"))
    print("(CPU s: this process's CPU time, best run, less sensitive than wall time to other jobs on the machine; "
          "peak MiB: resident-set growth during one extra run; agree: share of generated tokens equal to the "
          "baseline's; others: share of the machine's CPU time used by other processes during that run)")
    print()
    kv_bytes = (2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
                * (-(-(P + G) // L) * L) * (4 if args.dtype == "fp32" else 2))
    print(f"block cache size: {kv_bytes / 2**20:.1f} MiB (keys + values of {config.num_hidden_layers} layers)")
    print(f"generated tokens: {reference.shape[1]}")
    if "cached" in results and "uncached" in results:
        print(f"cached vs uncached generate: {results['uncached']['seconds'] / results['cached']['seconds']:.2f}x")
    if "uncached" in results and "baseline" in results:
        print(f"uncached generate vs baseline: {results['baseline']['seconds'] / results['uncached']['seconds']:.2f}x")
    print(f"tokens_identical={identical}")
    if "sprint" in results:
        print(f"sprint_agreement={results['sprint']['agreement']:.4f}")
        if "cached" in results:
            print(f"sprint_extra_speedup={results['cached']['seconds'] / results['sprint']['seconds']:.2f}")
            print(f"sprint_extra_speedup_cpu={results['cached']['cpu'] / results['sprint']['cpu']:.2f}")
    if "diffusers" in results and "cached" in results:
        print(f"diffusers_tokens_identical={results['diffusers']['agreement'] == 1.0}")
        print(f"vs_diffusers_speedup={results['diffusers']['seconds'] / results['cached']['seconds']:.2f}")
        print(f"vs_diffusers_speedup_cpu={results['diffusers']['cpu'] / results['cached']['cpu']:.2f}")
    if "cached" in results and "baseline" in results:
        print(f"speedup_vs_full_prefix_cpu={results['baseline']['cpu'] / results['cached']['cpu']:.2f}")
        print(f"speedup_vs_full_prefix={results['baseline']['seconds'] / results['cached']['seconds']:.2f}")
    return 0 if identical else 1


def profile_cached(run, torch):
    """Where the cached path spends its time: aten ops (torch.profiler) and Python functions (cProfile)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print("\n== torch.profiler, one cached run (self CPU time) ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=48))
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(20)
    print("== cProfile, one cached run (tottime) ==")
    print("\n".join(stream.getvalue().splitlines()[:45]))


if __name__ == "__main__":
    sys.exit(main())
