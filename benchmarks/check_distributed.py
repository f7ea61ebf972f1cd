"""Training on real distributed engines, checked against one process: FSDP2 and DeepSpeed ZeRO-3 on the shapes model.

    python benchmarks/check_distributed.py                     # 2 CPU processes (gloo), LoRA and full, 5 steps
    python benchmarks/check_distributed.py --quick             # 2 steps, FSDP2 only (the test's size)
    python benchmarks/check_distributed.py --device cuda --nproc 1     # the same engines on one GPU (run_gpu.sh)

For LoRA (the "default" preset) and for full fine-tuning of the shipped shapes model (src/llada_uni_shapes/model; the
vision tokenizer frozen), it runs `benchmarks/distributed_worker.py` once in one plain process (the reference) and once
per engine under torchrun with `--nproc` processes, on the same global batches, data and diffusion masks (seeded per
global example). It compares the global training loss of every step with the reference's, then reloads every saved
checkpoint in this process with `from_pretrained` (LoRA: the base model + the adapter through PEFT) and checks that it
gives the loss the trained, still sharded model gave on a fixed evaluation batch. ZeRO-3 runs when `deepspeed`
imports; otherwise its keys say why not.

The last line is one JSON object: `fsdp2_lora_rel_diff`, `fsdp2_full_rel_diff` (|loss - reference| / reference after
the last step), `fsdp2_reload_ok`, the same `zero3_*` keys, the largest per-step difference of each run
(`*_max_rel_diff`), the share of the parameter elements rank 0 stores (`*_rank0_share`: about 1 / nproc when the
engine shards), `steps`, `nproc` and `tolerance`. Exit status 1 when a difference exceeds `--tolerance` (1e-3) or
a checkpoint fails to reload.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "src")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

WORKER = os.path.join(REPO_ROOT, "benchmarks", "distributed_worker.py")
SHAPES_MODEL = os.path.join(REPO_ROOT, "src", "llada_uni_shapes", "model")
RELOAD_TOLERANCE = 1e-5  # a reloaded checkpoint must give the in-memory model's evaluation loss to rounding


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SHAPES_MODEL)
    parser.add_argument("--engines", default=None, help="comma-separated: fsdp2, zero3 (default: both; --quick: fsdp2)")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--steps", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--workdir", default=None, help="keep rows, logs and checkpoints here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 5)
    args.engines = (args.engines or ("fsdp2" if args.quick else "fsdp2,zero3")).split(",")
    args.modes = args.modes.split(",")
    return args


def write_rows(model_dir, count, path):
    """`count` shuffled rows of the three shapes tasks (examples/shapes/train_llm.task_rows) on scenes with the colour
    the LLM never saw (pink: the tutorial's LoRA task; on its training scenes the losses are ~1e-4, too close to zero
    for a relative comparison), images as the model's own codes, written once so every process reads the same bytes."""
    from examples.shapes.dataset import new_colour_split
    from examples.shapes.train_llm import task_rows
    from examples.shapes.train_tokenizer import encode, patch_pixels
    from transformers_llada_uni import LLaDA2UniForConditionalGeneration, LLaDA2UniProcessor

    model = LLaDA2UniForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = LLaDA2UniProcessor.from_pretrained(model_dir)
    cache = {}

    def codes_of(scene):
        if scene not in cache:
            pixels, grid, _ = patch_pixels(processor, [scene])
            with torch.no_grad():
                codes = encode(model, pixels, grid)[3][0]
            cache[scene] = {"token_ids": codes.tolist(), "h": int(grid[1]), "w": int(grid[2])}
        return cache[scene]

    rows, scenes = [], iter(new_colour_split(seed=0)["train"])
    while len(rows) < count:  # ~20 rows per scene
        rows += task_rows([next(scenes)], codes_of, seed=len(rows))
    with open(path, "w") as handle:
        json.dump(rows[:count], handle)


def launch(args, engine, out, rows, log):
    os.makedirs(out, exist_ok=True)
    worker = [WORKER, "--engine", engine, "--modes", ",".join(args.modes), "--model", args.model, "--rows", rows,
              "--out", out, "--steps", str(args.steps), "--global-batch", str(args.global_batch),
              "--device", args.device]
    if engine == "none":
        command = [sys.executable, *worker]
    else:  # --standalone: torchrun picks a free port, so concurrent runs on one machine do not collide
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(args.nproc), *worker]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), TOKENIZERS_PARALLELISM="false")
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT).returncode
    print(f"{engine}: exit {code} in {time.time() - start:.0f} s (log {log})", flush=True)
    if code != 0:
        with open(log) as handle:
            print("".join(handle.readlines()[-30:]), file=sys.stderr)
        return None
    return {mode: json.load(open(os.path.join(out, f"{mode}.json"))) for mode in args.modes}


def reload_loss(args, mode, checkpoint, rows):
    """The evaluation loss of a checkpoint loaded from disk, computed as the worker computes it."""
    from benchmarks.distributed_worker import EVAL_ROWS, EVAL_SEED, OBJECTIVE, example_loss
    from transformers_llada_uni import LLaDA2UniConfig, LLaDA2UniDataCollator, LLaDA2UniForConditionalGeneration
    from transformers_llada_uni import LLaDA2UniProcessor

    if mode == "lora":
        from peft import PeftModel

        base = LLaDA2UniForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, checkpoint)
        config = base.config
    else:
        model, info = LLaDA2UniForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32,
                                                                        output_loading_info=True)
        if any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")):
            raise RuntimeError(f"{checkpoint} does not match the model: {info}")
        config = model.config
    model = model.to(args.device).eval()
    config.get_text_config().diffusion_training = dict(OBJECTIVE)
    processor = LLaDA2UniProcessor.from_pretrained(args.model)
    block_length = LLaDA2UniConfig.from_pretrained(args.model).get_text_config().block_length
    collator = LLaDA2UniDataCollator(processor, block_length=block_length)
    with torch.no_grad():
        losses = [example_loss(model, collator, rows[i], EVAL_SEED + i, args.device).item()
                  for i in range(EVAL_ROWS)]
    return sum(losses) / len(losses)


def bundle_problems(folder):
    """What stops a saved full checkpoint from loading as remote code without this package: an `auto_map` entry whose
    module file is not in the folder (transformers copies the files of the model's class when it saves)."""
    auto_map = json.load(open(os.path.join(folder, "config.json"))).get("auto_map", {})
    return [f"auto_map {key} -> {value}: no {value.split('.')[0]}.py in the folder" for key, value in auto_map.items()
            if not os.path.isfile(os.path.join(folder, value.split(".")[0] + ".py"))]


def relative(value, reference):
    return abs(value - reference) / max(abs(reference), 1e-12)


def compare(args, engine, runs, reference, rows, work):
    summary = {}
    reload_ok = True
    for mode in args.modes:
        ours, ref = runs[mode]["losses"], reference[mode]["losses"]
        summary[f"{engine}_{mode}_rel_diff"] = relative(ours[-1], ref[-1])
        summary[f"{engine}_{mode}_max_rel_diff"] = max(relative(a, b) for a, b in zip(ours, ref))
        summary[f"{engine}_{mode}_rank0_share"] = runs[mode]["rank0_parameter_share"]  # < 1: the weights are sharded
        try:
            loaded = reload_loss(args, mode, os.path.join(work, engine, mode), rows)
            good = relative(loaded, runs[mode]["eval_loss"]) <= RELOAD_TOLERANCE
            problems = bundle_problems(os.path.join(work, engine, mode)) if mode == "full" else []
            for problem in problems:
                print(f"{engine} {mode}: {problem}", file=sys.stderr)
            good = good and not problems
            print(f"{engine} {mode}: reloaded eval loss {loaded:.6f}, in memory {runs[mode]['eval_loss']:.6f}, "
                  f"reference {reference[mode]['eval_loss']:.6f}", flush=True)
        except Exception as error:  # a checkpoint that does not load is the finding, not a crash of the check
            print(f"{engine} {mode}: reload failed: {type(error).__name__}: {error}", file=sys.stderr)
            good = False
        reload_ok = reload_ok and good
        print(f"{engine} {mode}: step losses {[round(v, 6) for v in ours]}\n"
              f"{'reference':>{len(engine)}} {mode}: step losses {[round(v, 6) for v in ref]}", flush=True)
    summary[f"{engine}_reload_ok"] = reload_ok
    return summary


def main(argv=None):
    args = parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="check_distributed_")
    os.makedirs(work, exist_ok=True)
    rows = os.path.join(work, "rows.json")
    write_rows(args.model, args.steps * args.global_batch, rows)
    reference = launch(args, "none", os.path.join(work, "none"), rows, os.path.join(work, "none.log"))
    if reference is None:
        print(json.dumps({"error": "the 1-process reference run failed"}))
        return 1
    summary, failed = {}, False
    for engine in args.engines:
        if engine == "zero3":
            try:
                import deepspeed  # noqa: F401
            except Exception as error:  # not installed, or installed but broken on this build
                summary["zero3_error"] = f"{type(error).__name__}: {error}"
                continue
        runs = launch(args, engine, os.path.join(work, engine), rows, os.path.join(work, f"{engine}.log"))
        if runs is None:
            summary[f"{engine}_error"] = f"the run failed; see {os.path.join(work, engine + '.log')}"
            failed = True
            continue
        summary.update(compare(args, engine, runs, reference, json.load(open(rows)), work))
    for key, value in summary.items():
        if key.endswith("rel_diff") and value > args.tolerance or key.endswith("reload_ok") and not value:
            failed = True
    summary = {key: (float(f"{value:.3g}") if isinstance(value, float) else value) for key, value in summary.items()}
    summary.update(steps=args.steps, nproc=args.nproc, global_batch=args.global_batch, device=args.device,
                   tolerance=args.tolerance)
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
