"""Score a shapes-world model on held-out scenes (no model judges another: the checker measures pixels).

    python benchmarks/eval_shapes.py --model shapes-model              # the test split of examples/shapes
    python benchmarks/eval_shapes.py --model shapes-model --limit 20   # a quick look
    python benchmarks/eval_shapes.py --model shapes-model --sprint keep_ratio=0.5      # the same with SPRINT
    python benchmarks/eval_shapes.py --model shapes-model --sprint keep_ratio=0.25,image_keep_ratio=1.0
    python benchmarks/eval_shapes.py --model shapes-model --dtype bfloat16 --no-block-cache   # bf16, full prefix

Text-to-image: the caption of each test scene -> image (turbo decoder) -> `checker.score_t2i` (colour, shape,
position). Understanding: every question of each test scene, exact match of the answer. Editing: each edit of each
test scene -> `checker.score_edit` (the asked attribute changed, the rest kept). Tokens per forward pass of
text-to-image token generation at thresholds 0.95 / 0.9 / 0.7. The newer tasks (`benchmarks/eval_family.py`, on
pairs of held-out scenes): thinking text-to-image (`thinking_t2i`: all three attributes right; `thinking_consistent`:
the plan text and the picture agree), `two_image_understanding`, `multi_ref_editing` (and its two kinds apart,
`multi_ref_put` and `multi_ref_recolour`), `interleaved` (every text and image segment right, in order; with
`interleaved_structure`, the share whose form is right) and `counting` (and `counting_one_shape`); `--no-family`
skips them. The last line is one JSON object with `t2i_color`, `t2i_shape`, `t2i_position`, `understanding`,
`editing` and `tpf_0.9` (and `sprint`, the settings, with --sprint), the newer tasks' scores, then `tpf_0.95`,
`tpf_0.7`, `dtype` and `block_cache` (and `vision_dtype` with --vision-float32).

`--dtype` loads every component of the pipeline (the LLM, its vision tokenizer, the semantic embedder, the Z-Image
transformer and the VAE) in that dtype; `--no-block-cache` sets `use_block_cache=False` in the LLM's generation
config, which every task reads, so each step re-runs the whole prefix (the reference the cache must match).
`--vision-float32` keeps the vision tokenizer in float32 under `--dtype bfloat16` (docs/performance.md: in bf16 its
quantiser cannot tell apart the shapes codebook's near-identical background codes).
"""

import argparse
import json
import os
import random
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from examples.shapes.checker import score_edit, score_t2i  # noqa: E402
from examples.shapes.dataset import split_scenes  # noqa: E402
from examples.shapes.world import caption, edits, questions, render  # noqa: E402

from benchmarks.eval_family import evaluate_family  # noqa: E402

SETTINGS = {"decoder": "turbo"}  # every LLM setting: the model's generation_config.json
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained shapes model folder (examples/shapes/build.py)")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--limit", type=int, default=None, help="at most this many scenes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="the split seed the model was built with")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sprint", default=None, metavar="KEY=VALUE[,KEY=VALUE...]",
                        help="run every LLM generation with SPRINT: 'on' for the defaults, or SprintConfig fields "
                        "(keep_ratio, image_keep_ratio, text_keep_ratio, confidence_alpha, cache_warmup_steps, "
                        "strategy, threshold, protect_structure, protected_token_ids as ids joined by ';'), e.g. "
                        "keep_ratio=0.5,protect_structure=false")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES),
                        help="dtype of every pipeline component (default float32)")
    parser.add_argument("--no-block-cache", action="store_true",
                        help="generate without the block cache (every step re-runs the whole prefix)")
    parser.add_argument("--no-family", action="store_true",
                        help="skip the newer tasks (thinking, two pictures, multi-reference edits, interleaved, counting)")
    parser.add_argument("--vision-float32", action="store_true",
                        help="keep the vision tokenizer (visual, vqmodel) in float32 whatever --dtype says")
    args = parser.parse_args(argv)
    try:
        args.sprint = parse_sprint(args.sprint)
    except ValueError as error:
        parser.error(f"--sprint: {error}")
    return args


def parse_sprint(text):
    """`None` -> None; "on" -> True; "keep_ratio=0.5,strategy=neg_entropy" -> a checked settings dict (the CLI's
    parser; its errors become ValueError here)."""
    from diffusers_llada_uni.cli import CommandError
    from diffusers_llada_uni.cli import parse_sprint as parse

    try:
        return parse(text)
    except CommandError as exc:
        raise ValueError(str(exc).removeprefix("--sprint: ")) from None


def use_sprint(model, sprint):
    """Every LLM generation the pipeline runs reads the model's generation config, so SPRINT is one field there."""
    model.generation_config.sprint = sprint


def evaluate_t2i(pipe, scenes, batch_size):
    hits = {"color": 0, "shape": 0, "position": 0}
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        images = pipe([caption(s) for s in chunk], generator=torch.Generator().manual_seed(0), **SETTINGS).images
        for scene, image in zip(chunk, images):
            scores = score_t2i(image, scene)
            for key in hits:
                hits[key] += int(scores[key])
    return {key: value / len(scenes) for key, value in hits.items()}


def evaluate_understanding(pipe, scenes, batch_size):
    pairs = [(scene, q, a) for scene in scenes for q, a in questions(scene)]
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        answers = pipe(image=[render(s) for s, _, _ in chunk], question=[q for _, q, _ in chunk],
                       max_new_tokens=16, block_length=16).text
        correct += sum(answer.strip().lower() == truth for answer, (_, _, truth) in zip(answers, chunk))
    return correct / len(pairs), len(pairs)


def evaluate_editing(pipe, scenes, batch_size):
    rng = random.Random(0)
    cases = [(scene, text, target) for scene in scenes for text, target in edits(scene, rng)]
    done = 0
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        images = pipe(image=[render(scene) for scene, _, _ in chunk], instruction=[text for _, text, _ in chunk],
                      generator=torch.Generator().manual_seed(0), **SETTINGS).images
        done += sum(int(score_edit(scene, target, image)) for (scene, _, target), image in zip(chunk, images))
    return done / len(cases), len(cases)


def tokens_per_forward(pipe, scenes, threshold):
    """Text-to-image tokens per forward pass at `threshold` (16 steps per block; the model's size and guidance)."""
    processor, model = pipe.processor, pipe.mllm
    settings = model.generation_config
    grid = processor.image_processor.generation_grid(settings.image_height, settings.image_width,
                                                     settings.pixels_per_token)
    batch = processor(text=[caption(s) for s in scenes], mode="t2i", grid=grid)
    out = model.generate(**batch, image_steps=16, threshold=threshold, return_dict_in_generate=True)
    # Every row of the batch advances in the same forward passes, so this is tokens per pass per image.
    return grid[0] * grid[1] / out.num_forward_passes


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers_llada_uni import LLaDA2UniPipeline

    if not os.path.isdir(args.model):
        print(f"error: --model {args.model} is not a folder", file=sys.stderr)
        return 2
    pipe = LLaDA2UniPipeline.from_pretrained(args.model, dtype=DTYPES[args.dtype])
    pipe.set_progress_bar_config(disable=True)
    if args.no_block_cache:
        pipe.mllm.generation_config.use_block_cache = False
    if args.vision_float32:
        # get_image_tokens casts pixels to the vision tower's dtype, so the rest of the model may stay in bf16.
        pipe.mllm.visual.float()
        pipe.mllm.vqmodel.float()
    if args.sprint is not None:
        use_sprint(pipe.mllm, args.sprint)
    scenes = split_scenes(seed=args.seed)[args.split][: args.limit]
    timings, result = {}, {}
    start = time.time()
    t2i = evaluate_t2i(pipe, scenes, args.batch_size)
    timings["t2i"] = time.time() - start
    start = time.time()
    result["understanding"], questions_count = evaluate_understanding(pipe, scenes, args.batch_size)
    timings["understanding"] = time.time() - start
    start = time.time()
    result["editing"], edits_count = evaluate_editing(pipe, scenes, args.batch_size)
    timings["editing"] = time.time() - start
    tpf = {threshold: tokens_per_forward(pipe, scenes[:8], threshold) for threshold in (0.95, 0.9, 0.7)}
    family, family_counts = {}, {}
    if not args.no_family:
        family, family_counts, family_timings = evaluate_family(pipe, scenes, args.batch_size, seed=args.seed)
        timings.update(family_timings)
    print(f"{len(scenes)} {args.split} scenes, {questions_count} questions, {edits_count} edits, {args.dtype}, "
          + ("no block cache" if args.no_block_cache else "block cache")
          + (", vision tokenizer float32" if args.vision_float32 else "")
          + (f", SPRINT {args.sprint}" if args.sprint is not None else ""))
    print("| task | score | wall time |")
    print("|---|---|---|")
    for key in ("color", "shape", "position"):
        print(f"| text-to-image {key} | {t2i[key]:.3f} | |")
    print(f"| text-to-image (all) | | {timings['t2i']:.1f} s |")
    print(f"| understanding exact match | {result['understanding']:.3f} | {timings['understanding']:.1f} s |")
    print(f"| editing success | {result['editing']:.3f} | {timings['editing']:.1f} s |")
    for key, value in family.items():
        spent = timings.get("thinking" if key.startswith("thinking") else key)
        print(f"| {key} | {'n/a' if value is None else f'{value:.3f}'} | "
              f"{'' if spent is None or key == 'thinking_consistent' else f'{spent:.1f} s'} |")
    if family_counts:
        print(f"newer tasks' cases: {family_counts}")
    for threshold, value in tpf.items():
        print(f"| tokens per forward, threshold {threshold} | {value:.2f} | |")
    summary = {"t2i_color": t2i["color"], "t2i_shape": t2i["shape"], "t2i_position": t2i["position"],
               "understanding": result["understanding"], "editing": result["editing"], "tpf_0.9": tpf[0.9]}
    summary.update(family)
    summary = {key: None if value is None else round(value, 4) for key, value in summary.items()}
    if args.sprint is not None:
        summary["sprint"] = args.sprint
    summary.update({"tpf_0.95": round(tpf[0.95], 4), "tpf_0.7": round(tpf[0.7], 4), "dtype": args.dtype,
                    "block_cache": not args.no_block_cache})
    if args.vision_float32:
        summary["vision_dtype"] = "float32"
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
