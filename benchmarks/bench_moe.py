"""One MoE layer of LLaDA2.0-mini's shape against a dense SwiGLU MLP with the same active FLOPs (CPU).

For a block of T tokens routed to k of E experts (intermediate I each), the routed work is T x k expert MLPs. The
dense baseline does the same multiply-adds in one SwiGLU MLP of intermediate k * I. Both get the same input; the MoE
side is the project's `LLaDA2MoeSparseMoeBlock` without its shared expert (router + grouped expert matmuls + combine),
timed per experts backend. The ratio says what routing and sparsity cost beyond the arithmetic; at a 32-token block
most of it is reading the weights of every expert hit (about 1 - (1 - k/E)^T of them), which a dense layer of equal
FLOPs never has to. On a GPU every timing is bracketed by synchronisations, and the read floor is one streaming sum
over all the experts' weights, scaled to the share of experts hit.

    python benchmarks/bench_moe.py                 # H 2048, I 512, E 256, k 8, T 32 (LLaDA2.0-mini), fp32
    python benchmarks/bench_moe.py --quick         # a small layer, for a smoke test
    python benchmarks/bench_moe.py --device cuda --dtype bf16 --repeats 200   # the same on a GPU

The last line is one JSON object with `moe_vs_dense_time` (best backend) and the per-backend times.
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
import torch.nn.functional as F  # noqa: E402

from benchmarks.bench_generate import tune_malloc  # noqa: E402

SHAPES = {
    "mini": dict(hidden=2048, inter=512, experts=256, top_k=8, n_group=8, topk_group=4),
    "quick": dict(hidden=256, inter=64, experts=32, top_k=4, n_group=4, topk_group=2),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small layer (smoke test)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens in the block (default 32)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per method (the median is kept)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    return parser.parse_args(argv)


def build_layer(shape: dict, dtype: torch.dtype):
    from transformers_llada_uni import LLaDA2MoeConfig
    from transformers_llada_uni.modeling_llada2_moe import LLaDA2MoeSparseMoeBlock

    config = LLaDA2MoeConfig(
        vocab_size=1024, hidden_size=shape["hidden"], moe_intermediate_size=shape["inter"], intermediate_size=64,
        num_experts=shape["experts"], num_experts_per_tok=shape["top_k"], n_group=shape["n_group"],
        topk_group=shape["topk_group"], num_shared_experts=0, num_hidden_layers=1, first_k_dense_replace=0,
        num_attention_heads=8, num_key_value_heads=2,
    )
    torch.manual_seed(0)
    layer = LLaDA2MoeSparseMoeBlock(config).eval()
    std = shape["hidden"] ** -0.5
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(0.0, std)
    return layer.to(dtype)


def median_time(fn, repeats: int, synchronize=lambda: None) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()
    shape = SHAPES["quick" if args.quick else "mini"]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    layer = build_layer(shape, dtype).to(device)
    hidden = torch.randn(1, args.tokens, shape["hidden"], generator=torch.Generator().manual_seed(1)).to(device, dtype)
    dense_inter = shape["top_k"] * shape["inter"]
    gate_up = (torch.randn(2 * dense_inter, shape["hidden"]) * shape["hidden"] ** -0.5).to(device, dtype)
    down = (torch.randn(shape["hidden"], dense_inter) * dense_inter ** -0.5).to(device, dtype)

    def dense():
        gate, up = F.linear(hidden, gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, down)

    with torch.no_grad():
        topk_idx, _, _ = layer.gate(hidden.reshape(-1, shape["hidden"]))
        hit = int(topk_idx.unique().numel())
        timings = {"dense": median_time(dense, args.repeats, sync)}
        for backend in ("grouped_mm", "loop"):
            layer.experts.backend = backend
            timings[backend] = median_time(lambda: layer(hidden), args.repeats, sync)
        # The memory floor: one streaming pass over the weights of the experts hit (no arithmetic to speak of).
        experts = topk_idx.unique()
        gate_up_w, down_w = layer.experts.gate_up_proj, layer.experts.down_proj

        def read_hit_weights():
            return sum(float(gate_up_w[e].sum()) + float(down_w[e].sum()) for e in experts.tolist())

        def read_all_weights():  # one kernel per tensor, no host round trip per expert
            return gate_up_w.sum() + down_w.sum()

        if cuda:
            whole = median_time(read_all_weights, max(3, args.repeats // 2), sync)
            timings["read_floor"] = whole * hit / shape["experts"]
        else:
            timings["read_floor"] = median_time(read_hit_weights, max(3, args.repeats // 2))
    best = min(("grouped_mm", "loop"), key=timings.get)
    flops = 2 * 3 * args.tokens * shape["top_k"] * shape["inter"] * shape["hidden"]
    weight_bytes = torch.empty((), dtype=dtype).element_size() * 3 * shape["inter"] * shape["hidden"]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}"
          + (f", {torch.cuda.get_device_name(device)}" if cuda else ""))
    print(f"layer: H {shape['hidden']}, I {shape['inter']}, E {shape['experts']}, top-{shape['top_k']}, "
          f"{args.tokens} tokens; {hit} experts hit ({hit * weight_bytes / 1e6:.0f} MB of expert weights read), "
          f"dense equal-FLOP MLP reads {shape['top_k'] * weight_bytes / 1e6:.0f} MB")
    for name in ("dense", "grouped_mm", "loop"):
        print(f"{name}: {timings[name] * 1e3:.2f} ms ({flops / timings[name] / 1e9:.1f} GFLOP/s on the routed work)")
    moved = hit * weight_bytes / timings["read_floor"] / 1e9
    print(f"read_floor: {timings['read_floor'] * 1e3:.2f} ms ({moved:.1f} GB/s)")
    print(f"the MoE layer takes {timings[best] / timings['read_floor']:.2f}x the time of merely reading its hit "
          "experts' weights once")
    result = {"moe_vs_dense_time": round(timings[best] / timings["dense"], 3), "best_backend": best,
              "moe_vs_read_floor": round(timings[best] / timings["read_floor"], 3),
              "dense_ms": round(timings["dense"] * 1e3, 3), "grouped_mm_ms": round(timings["grouped_mm"] * 1e3, 3),
              "loop_ms": round(timings["loop"] * 1e3, 3), "experts_hit": hit, "device": device.type}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
