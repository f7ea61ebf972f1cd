"""Token for token: does the block cache change what the shapes model generates, in this dtype?

    python benchmarks/shapes_cache_agreement.py --model src/llada_uni_shapes/model --dtype bfloat16 --threads 1

For the held-out scenes of `eval_shapes.py`, every LLM generation of its three tasks (text-to-image codes, answers to
every question, edited-image codes; no pixel decoding) runs twice on the same pipeline, with the block cache and
without it (`use_block_cache` in the model's generation config), and the outputs are compared exactly. The last line
is one JSON object: the share of identical outputs per task and overall, the counts, dtype and vision dtype.
Metrics that agree (eval_shapes) can hide outputs that differ; this counts the outputs themselves.
"""

import argparse
import json
import os
import random
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "src")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

from benchmarks.eval_shapes import DTYPES  # noqa: E402
from examples.shapes.dataset import split_scenes  # noqa: E402
from examples.shapes.world import caption, edits, questions, render  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES))
    parser.add_argument("--vision-float32", action="store_true", help="the vision tokenizer stays in float32")
    parser.add_argument("--limit", type=int, default=None, help="at most this many test scenes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def outputs(pipe, scenes, batch_size):
    """Every LLM output of the three tasks, as comparable Python values (eval_shapes' prompts and order)."""
    out = {"t2i": [], "understanding": [], "editing": []}

    def codes(result):
        return [tuple(item["token_ids"].tolist()) for item in result.image_tokens]

    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        out["t2i"] += codes(pipe([caption(s) for s in chunk], output_type="tokens"))
    pairs = [(scene, q) for scene in scenes for q, _ in questions(scene)]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        out["understanding"] += pipe(image=[render(s) for s, _ in chunk], question=[q for _, q in chunk],
                                     max_new_tokens=16, block_length=16).text
    rng = random.Random(0)
    cases = [(scene, text) for scene in scenes for text, _ in edits(scene, rng)]
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        out["editing"] += codes(pipe(image=[render(s) for s, _ in chunk], instruction=[t for _, t in chunk],
                                     output_type="tokens"))
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers_llada_uni import LLaDA2UniPipeline

    pipe = LLaDA2UniPipeline.from_pretrained(args.model, dtype=DTYPES[args.dtype], decoder=None)
    pipe.set_progress_bar_config(disable=True)
    if args.vision_float32:
        pipe.mllm.visual.float()
        pipe.mllm.vqmodel.float()
    scenes = split_scenes(seed=0)["test"][: args.limit]
    runs = {}
    for cache in (True, False):
        pipe.mllm.generation_config.use_block_cache = cache
        runs[cache] = outputs(pipe, scenes, args.batch_size)
    summary, same_all, count_all = {}, 0, 0
    for task in runs[True]:
        same = sum(a == b for a, b in zip(runs[True][task], runs[False][task]))
        count = len(runs[True][task])
        print(f"{task}: {same} of {count} outputs identical with and without the cache")
        summary[f"{task}_identical"] = round(same / count, 4)
        summary[f"{task}_count"] = count
        same_all, count_all = same_all + same, count_all + count
    summary.update(identical=round(same_all / count_all, 4), dtype=args.dtype,
                   vision_dtype="float32" if args.vision_float32 else args.dtype)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
