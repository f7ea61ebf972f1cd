"""One process of `check_distributed.py`: a few masked-diffusion training steps of the shapes model under one engine.

    python benchmarks/distributed_worker.py --engine none ...                                   # the 1-process reference
    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        benchmarks/distributed_worker.py --engine fsdp2 ...                                     # FSDP2 (fully_shard)
    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        benchmarks/distributed_worker.py --engine zero3 ...                                     # DeepSpeed ZeRO-3

Every run sees the same global batches (rows `step * B .. step * B + B - 1` of `--rows`) and the same diffusion masks:
each example is its own micro-batch, noised with a generator seeded by its GLOBAL index, never by the rank, so the
reference and every rank draw the masks of an example identically. A rank takes a contiguous share of each global
batch and scales each example's loss by 1 / (its share); the engine's mean over ranks then gives the reference's mean
over the global batch. Rank 0 writes `<out>/<mode>.json` (per-step global losses, the loss on a fixed evaluation batch
after training) and the checkpoint `<out>/<mode>` (a full `save_pretrained` folder, or a PEFT adapter).
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
import torch.distributed as dist  # noqa: E402

# The shapes model's own LLM objective (examples/shapes/train_llm.py), with the block objective of its config.
OBJECTIVE = {"objective": "block", "mask_ratio_min": 0.05, "mask_ratio_max": 1.0, "loss_weighting": "inverse_t"}
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}  # dropout draws from each rank's own RNG: off for equality
LEARNING_RATE = {"lora": 1e-2, "full": 1e-3}
EVAL_SEED = 1_000_000  # evaluation masks: far from every training example's seed
EVAL_ROWS = 4  # the evaluation batch: the first rows, with their own masks
DECODER_LAYER = "LLaDA2MoeDecoderLayer"  # the unit accelerate's TRANSFORMER_BASED_WRAP shards in fsdp_gpu.yaml


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("none", "fsdp2", "zero3"), required=True)
    parser.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", required=True, help="a JSON list of collator rows (check_distributed writes it)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--ds-config", default=os.path.join(REPO_ROOT, "examples", "accelerate", "ds_zero3.json"))
    return parser.parse_args(argv)


def load_model(model_dir, mode, seed, device):
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration
    from transformers_llada_uni.peft_llada2_uni import get_lora_model

    model = LLaDA2UniForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.config.get_text_config().diffusion_training = dict(OBJECTIVE)
    for module in (model.visual, model.vqmodel):  # rows carry codes: the vision tokenizer never runs
        module.requires_grad_(False)
    if mode == "lora":
        torch.manual_seed(seed)  # the same adapter initialisation in every process
        model = get_lora_model(model, "default", **LORA)
    return model


def example_loss(model, collator, row, seed, device):
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator([row]).items()}
    generator = torch.Generator(device=device).manual_seed(seed)
    return model(**batch, generator=generator).loss


def fsdp2(model, device):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # What accelerate's fsdp2_prepare_model does with fsdp_gpu.yaml: every decoder layer, then the root. (accelerate
    # 1.16 only turns FSDP on for GPU-like devices, so on CPUs the same calls are made here directly.)
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    for module in model.modules():
        if type(module).__name__ == DECODER_LAYER:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def zero3_config(path, micro_steps, world, hidden):
    """ds_zero3.json with its "auto" values filled the way transformers' Trainer fills them (fp32 here)."""
    config = json.load(open(path))
    zero = config["zero_optimization"]
    auto = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden}
    for key, value in auto.items():
        if zero.get(key) == "auto":
            zero[key] = value
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=micro_steps,
                  train_batch_size=micro_steps * world, gradient_clipping=1.0)
    config["bf16"] = {"enabled": False}
    return config


def train(args, mode, rows, collator, rank, world):
    device = args.device
    model = load_model(args.model, mode, args.seed, device)
    batch, share = args.global_batch, args.global_batch // world
    engine = None
    if args.engine == "fsdp2":
        model = fsdp2(model, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE[mode], weight_decay=0.0)
    if args.engine == "zero3":
        import deepspeed

        hidden = model.config.get_text_config().hidden_size
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                       config=zero3_config(args.ds_config, share, world, hidden))
    model.train()
    held, total_numel = held_elements(args.engine, model)
    losses, start = [], time.time()
    for step in range(args.steps):
        mine = range(step * batch + rank * share, step * batch + (rank + 1) * share)
        total = torch.zeros((), device=device)
        if engine is None:
            optimizer.zero_grad(set_to_none=True)
        for index in mine:
            loss = example_loss(engine or model, collator, rows[index], args.seed * 100_003 + index, device)
            if engine is None:
                (loss / share).backward()  # FSDP2 / the reference: the engine averages over ranks
            else:
                engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps and averages over ranks
                engine.step()  # an optimizer step only at the accumulation boundary
            total += loss.detach()
        if engine is None:
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
        if world > 1:
            dist.all_reduce(total)
        losses.append(total.item() / batch)
    seconds = time.time() - start
    model.eval()
    with torch.no_grad():  # every rank runs every evaluation row: sharded engines need all ranks in each forward
        evaluation = [example_loss(engine or model, collator, rows[i], EVAL_SEED + i, device).item()
                      for i in range(EVAL_ROWS)]
    save(args, mode, engine, model, rank)
    return {"losses": losses, "eval_loss": sum(evaluation) / len(evaluation), "train_seconds": round(seconds, 2),
            "rank0_parameter_share": round(held / total_numel, 4)}


def held_elements(engine, model):
    """(parameter elements this rank stores, elements of the whole model): evidence that the engine really shards."""
    held = total = 0
    for parameter in model.parameters():
        if engine == "fsdp2":
            held, total = held + parameter.to_local().numel(), total + parameter.numel()
        elif engine == "zero3":
            held, total = held + parameter.ds_tensor.numel(), total + parameter.ds_numel
        else:
            held, total = held + parameter.numel(), total + parameter.numel()
    return held, total


def full_state_dict(args, engine, model):
    if args.engine == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if args.engine == "zero3":
        return engine._zero3_consolidated_16bit_state_dict()  # gathers every partition on rank 0 (fp32 here)
    return None


def save(args, mode, engine, model, rank):
    state = full_state_dict(args, engine, model)  # collective: every rank takes part
    if rank == 0:
        module = engine.module if engine is not None else model
        if args.engine == "fsdp2" and mode == "full":
            # fully_shard swaps the model's class for FSDP<name>, defined in torch; transformers 5.25's save_pretrained
            # then copies torch's _fsdp_*.py files as the "remote code" and points auto_map at them, leaving out
            # ours. Save from a plain copy holding the gathered weights instead.
            module = load_model(args.model, mode, args.seed, "cpu")
            module.load_state_dict(state, strict=True)
            state = None
        module.save_pretrained(os.path.join(args.out, mode), state_dict=state)
    if dist.is_initialized():
        dist.barrier()


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from transformers_llada_uni import LLaDA2UniConfig, LLaDA2UniDataCollator, LLaDA2UniProcessor

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.engine == "none" and world != 1:
        raise SystemExit("--engine none is the 1-process reference; start it without torchrun")
    if args.device == "cuda":  # before the process group: NCCL binds each rank to the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        args.device = f"cuda:{torch.cuda.current_device()}"
    if args.engine != "none":
        if args.engine == "zero3":
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo" if args.device == "cpu" else "nccl")
        else:
            dist.init_process_group("gloo" if args.device == "cpu" else "nccl")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.global_batch % world:
        raise SystemExit(f"--global-batch {args.global_batch} must divide among {world} processes")
    rows = json.load(open(args.rows))
    if len(rows) < args.steps * args.global_batch:
        raise SystemExit(f"--rows holds {len(rows)} rows, fewer than {args.steps} steps x {args.global_batch}")
    processor = LLaDA2UniProcessor.from_pretrained(args.model)
    block_length = LLaDA2UniConfig.from_pretrained(args.model).get_text_config().block_length  # train as it decodes
    collator = LLaDA2UniDataCollator(processor, block_length=block_length)
    for mode in args.modes.split(","):
        result = train(args, mode, rows, collator, rank, world)
        if rank == 0:
            result.update(engine=args.engine, world_size=world, mode=mode)
            with open(os.path.join(args.out, f"{mode}.json"), "w") as handle:
                json.dump(result, handle)
            print(f"[{args.engine} x{world}] {mode}: losses {result['losses']} eval {result['eval_loss']:.6f}, rank 0 "
                  f"holds {result['rank0_parameter_share']:.1%} of the parameters", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
