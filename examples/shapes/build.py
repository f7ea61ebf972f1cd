"""Train the whole tiny LLaDA2.0-Uni of the shapes world from scratch, stage by stage, into one converted folder.

    python examples/shapes/build.py --out shapes-model            # the full recipe
    python examples/shapes/build.py --out /tmp/smoke --quick      # every stage for a few steps (a smoke test)

Stages (each in its own module): 1 SigLIP-VQ tokenizer, 2 VAE, 3 Z-Image decoder + turbo distillation, 4 MoE LLM.
Only training scenes are seen by any stage; the validation and test scenes of `dataset.split_scenes` stay held out.
The result loads with `LLaDA2UniPipeline.from_pretrained(out)`.
"""

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from examples.shapes.dataset import split_scenes  # noqa: E402
from examples.shapes.factory import (  # noqa: E402
    ShapesModelSizes,
    build_model,
    build_pixel_side,
    build_processor,
    build_tokenizer,
    save_pipeline,
)
from examples.shapes.train_decoder import distill_turbo, train_normal, vae_latents  # noqa: E402
from examples.shapes.train_llm import task_rows, train_llm  # noqa: E402
from examples.shapes.train_tokenizer import encode, patch_pixels, to_target, train_tokenizer  # noqa: E402
from examples.shapes.train_vae import train_vae  # noqa: E402
from examples.shapes.world import VOCABULARY, all_scenes, render  # noqa: E402

# Sized for 2 CPU cores (about an hour in all); more steps help every stage.
FULL = {"tokenizer": 1500, "vae": 600, "decoder": 1500, "turbo": 800, "llm": 1500}
QUICK = {"tokenizer": 5, "vae": 5, "decoder": 5, "turbo": 5, "llm": 5}


def scene_codes(model, processor, scenes) -> dict:
    """{scene: {"token_ids", "h", "w"}} from the trained tokenizer (what the model itself would compute)."""
    pixels, grid, _ = patch_pixels(processor, scenes)
    with torch.no_grad():
        codes = torch.cat([encode(model, chunk, grid)[3] for chunk in pixels.split(256)])
    _, h, w = (int(v) for v in grid)
    return {scene: {"token_ids": row, "h": h, "w": w} for scene, row in zip(scenes, codes)}


def build(out: Path, *, quick=False, seed=0, threads=None, log=print) -> dict:
    if threads:
        torch.set_num_threads(threads)
    steps = QUICK if quick else FULL
    timings, metrics, started = {}, {}, time.time()
    splits = split_scenes(seed=seed)
    train = splits["train"]
    sizes = ShapesModelSizes()
    tokenizer = build_tokenizer(VOCABULARY)
    processor = build_processor(tokenizer, sizes)
    model = build_model(tokenizer, sizes, seed=seed)
    pixel = build_pixel_side(sizes, seed=seed)

    def stage(name, fn):
        start = time.time()
        result = fn()
        timings[name] = round(time.time() - start, 1)
        log(f"== {name} done in {timings[name]} s: {result}")
        return result

    metrics["tokenizer"] = stage("tokenizer", lambda: train_tokenizer(
        model, processor, train, steps=steps["tokenizer"], seed=seed, log=log))
    codes = scene_codes(model, processor, all_scenes())
    metrics["vae"] = stage("vae", lambda: train_vae(pixel["vae"], train, steps=steps["vae"], seed=seed, log=log))

    train_codes = torch.stack([codes[scene]["token_ids"] for scene in train])
    grid = (codes[train[0]]["h"], codes[train[0]]["w"])
    latents = vae_latents(pixel["vae"], to_target([render(scene) for scene in train]))
    stage("decoder", lambda: train_normal(pixel["semantic_embedder"], pixel["transformer"], train_codes, latents,
                                          grid, steps=steps["decoder"], seed=seed, log=log))
    # The teacher's 49-step CFG samples are the expensive part: a random subset of the training grids is enough.
    subset = torch.randperm(len(train_codes), generator=torch.Generator().manual_seed(seed))[:384]
    stage("turbo", lambda: distill_turbo(
        pixel["semantic_embedder"], pixel["transformer"], pixel["transformer_turbo"], pixel["scheduler"],
        pixel["scheduler_turbo"], train_codes[subset], grid, tuple(latents.shape[1:]), steps=steps["turbo"],
        teacher_steps=4 if quick else 49, seed=seed, log=log) is not None)
    rows = task_rows(train, lambda scene: codes[scene], seed=seed)
    logs = stage("llm", lambda: train_llm(model, processor, rows, out.parent / f".{out.name}-trainer",
                                          steps=steps["llm"], batch_size=16, seed=seed))
    metrics["llm_loss"] = [round(entry["loss"], 4) for entry in logs]
    save_pipeline(out, processor, model, pixel)
    timings["total"] = round(time.time() - started, 1)
    summary = {"timings_s": timings, "metrics": metrics, "splits": {k: len(v) for k, v in splits.items()},
               "llm_rows": len(rows), "quick": quick}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the trained model into")
    parser.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test; the model is bad)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    summary = build(args.out, quick=args.quick, seed=args.seed, threads=args.threads)
    print(json.dumps(summary["timings_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
