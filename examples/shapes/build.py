"""Train the whole tiny LLaDA2.0-Uni of the shapes world from scratch, stage by stage, into one converted folder.

    python examples/shapes/build.py --out shapes-model            # the full recipe
    python examples/shapes/build.py --out /tmp/smoke --quick      # every stage for a few steps (a smoke test)
    python examples/shapes/build.py --out shapes-model --resume   # reuse the stages a previous run finished

Stages (each in its own module): 1 SigLIP-VQ tokenizer, 2 VAE, 3 Z-Image decoder + turbo distillation, 4 MoE LLM.
Only training scenes are seen by any stage; the validation and test scenes of `dataset.split_scenes` stay held out.
The pixel side (stages 1-3) also sees the training part of the new-colour (pink) scenes, which the LLM never sees.
Each finished stage's weights are kept in `--work` (default: `.<out>-work` beside `out`); `--resume` loads them
instead of training again (delete a stage's file to redo it and everything after it). `--stages` trains only some
stages and loads the rest, so on two cores the LLM and the pixel side can train side by side:

    python examples/shapes/build.py --out M --stages tokenizer --threads 2
    python examples/shapes/build.py --out M --stages llm,llm2,llm3 --threads 1 &      # these two at once
    python examples/shapes/build.py --out M --stages vae,decoder,turbo --threads 1
    wait; python examples/shapes/build.py --out M --resume --threads 2    # llm4-llm14 (llm6 needs turbo), writes M

The result loads with `LLaDA2UniPipeline.from_pretrained(out)`.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from examples.shapes.dataset import new_colour_split, split_scenes  # noqa: E402
from examples.shapes.family import cases, family_rows  # noqa: E402
from examples.shapes.factory import (  # noqa: E402
    ShapesModelSizes,
    build_model,
    build_pixel_side,
    build_processor,
    build_tokenizer,
    extend_vocabulary,
    save_pipeline,
)
from examples.shapes.roundtrip import roundtrip_codes  # noqa: E402
from examples.shapes.train_decoder import distill_turbo, train_normal, vae_latents  # noqa: E402
from examples.shapes.train_llm import task_rows, train_llm  # noqa: E402
from examples.shapes.train_tokenizer import encode, patch_pixels, to_target, train_tokenizer  # noqa: E402
from examples.shapes.train_vae import train_vae  # noqa: E402
from examples.shapes.world import ALL_COLOURS, EXTRA_WORDS, VOCABULARY, all_scenes, render  # noqa: E402

# Sized for 2 CPU cores (see docs/shapes.md for the time each stage takes); more steps help every stage.
FULL = {"tokenizer": 1500, "vae": 800, "decoder": 4500, "turbo": 1000, "llm": 4000, "llm2": 2500, "llm3": 2500,
        "llm4": 2500, "llm5": 2500, "llm6": 2500, "llm7": 3000,
        "llm8": 3000, "llm9": 3000, "llm10": 4200, "llm11": 2000, "llm12": 4000, "llm13": 4000, "llm14": 2400}
QUICK = {name: 5 for name in FULL}
# The LLM first trains in six cosine cycles (warm restarts, the rate falling to 5e-4). Flat weighting throughout: the
# ELBO's 1/t weights make a one-token answer masked at small t count up to 20x, a noisy signal for the understanding
# rows.
# From the second cycle on, complementary masks (every supervised token predicted once per pair of rows). From the
# fourth, more copies of what the model still gets wrong most: questions that name a place, and edits (and captions
# again, which the fourth cycle's mix had made rarer). The last also gives 40% of the question and edit rows the
# model's own drawing as their source (`roundtrip.py`), so it answers about and edits what it drew. Cycles 7-14 add
# the family's other tasks (`family.py`), every earlier row still in the mix.
FLAT = {"mask_ratio_min": 0.05, "mask_ratio_max": 1.0, "loss_weighting": "none"}
PAIRED = {**FLAT, "complementary_masking": True}
LATE_ROWS = {"lookup_repeats": 4, "edit_repeats": 3, "t2i_repeats": 6}
# From llm9 on: the earlier rows with fewer place-naming questions, and the newer tasks weighted to what is still short.
FOCUSED_ROWS = {**LATE_ROWS, "lookup_repeats": 2, "edit_repeats": 4, "roundtrip_rate": 0.4}
FOCUSED_FAMILY = {"pair_repeats": {"Which": 1, "Are": 3, "Where": 2}, "counting_repeats": (4, 1)}
LLM_PHASES = {"llm": {"lr": 2e-3, "objective": FLAT},
              "llm2": {"lr": 1e-3, "objective": PAIRED},
              "llm3": {"lr": 5e-4, "objective": PAIRED},
              "llm4": {"lr": 5e-4, "objective": PAIRED, "rows": {"lookup_repeats": 3, "edit_repeats": 3}},
              "llm5": {"lr": 5e-4, "objective": PAIRED, "rows": LATE_ROWS},
              "llm6": {"lr": 5e-4, "objective": PAIRED, "rows": {**LATE_ROWS, "roundtrip_rate": 0.4}},
              # The newer tasks (family.py), after the tokenizer gains their words; the earlier rows stay in the mix.
              "llm7": {"lr": 5e-4, "objective": PAIRED, "rows": {**LATE_ROWS, "roundtrip_rate": 0.4}, "family": {},
                       "by_length": True},
              # After llm7 the newer tasks had hardly started (two-picture answers 7%, interleaved 0%) and edits had
              # lost 3 points: a higher rate, twice the newer rows, one more copy of each edit.
              "llm8": {"lr": 1e-3, "objective": PAIRED,
                       "rows": {**LATE_ROWS, "edit_repeats": 4, "roundtrip_rate": 0.4},
                       "family": {"thinking_repeats": 6, "pair_repeats": {"Which": 2, "Are": 6, "Where": 4},
                                  "multi_ref_repeats": 4, "interleaved_repeats": 6, "counting_repeats": (8, 1)},
                       "by_length": True},
              # After llm8 two-picture questions and counting were there, and thinking pictures close (0.86); the
              # interleaved answers copied the prompt's caption wrong and multi-reference "put ..." edits mostly
              # failed: their rows take 40% of the mix, the questions fewer place-naming copies.
              "llm9": {"lr": 1e-3, "objective": PAIRED, "rows": FOCUSED_ROWS,
                       "family": {**FOCUSED_FAMILY, "thinking_repeats": 8, "multi_ref_repeats": {"put": 16, "make": 6},
                                  "interleaved_repeats": 20},
                       "by_length": True},
              # After llm9 the interleaved texts were right (97%) but not the pictures in them (a changed picture
              # drawn from the one before it: 3%), "put ..." edits 55%, thinking pictures 91%: more of each, a longer
              # cycle, and captions x8 (text-to-image shape had lost half a point).
              "llm10": {"lr": 1e-3, "objective": PAIRED, "rows": {**FOCUSED_ROWS, "t2i_repeats": 8},
                        "family": {**FOCUSED_FAMILY, "thinking_repeats": 12,
                                   "multi_ref_repeats": {"put": 24, "make": 6}, "interleaved_repeats": 30},
                        "by_length": True}}
# A shorter cycle at half the rate: interleaved answers (38%) and thinking pictures (95%) still climbing.
LLM_PHASES["llm11"] = {**LLM_PHASES["llm10"], "lr": 5e-4,
                       "family": {**LLM_PHASES["llm10"]["family"], "thinking_repeats": 16,
                                  "multi_ref_repeats": {"put": 16, "make": 6}}}
# After llm11 an interleaved answer's changed picture was right in 71% of training scenes but 50% of held-out ones:
# each scene had one scripted change, seen again in every cycle. Eight changes per scene (`draws`: options of
# `family.cases`), a third of the rows interleaved, back to the higher rate.
LLM_PHASES["llm12"] = {**LLM_PHASES["llm11"], "lr": 1e-3, "draws": {"interleaved_per_scene": 8},
                       "family": {**LLM_PHASES["llm11"]["family"], "interleaved_repeats": 5}}
# After llm12 interleaved answers 64%, thinking pictures 95%: sixteen changes per scene, more thinking rows.
LLM_PHASES["llm13"] = {**LLM_PHASES["llm12"], "draws": {"interleaved_per_scene": 16},
                       "family": {**LLM_PHASES["llm12"]["family"], "thinking_repeats": 24, "interleaved_repeats": 3}}
# After llm13 interleaved answers 74%, still climbing: a shorter cycle at half the rate, interleaved rows x4.
LLM_PHASES["llm14"] = {**LLM_PHASES["llm13"], "lr": 5e-4,
                       "family": {**LLM_PHASES["llm13"]["family"], "interleaved_repeats": 4}}
LLM_BATCH = 32


def scene_codes(model, processor, scenes) -> dict:
    """{scene: {"token_ids", "h", "w"}} from the trained tokenizer (what the model itself would compute)."""
    pixels, grid, _ = patch_pixels(processor, scenes)
    with torch.no_grad():
        codes = torch.cat([encode(model, chunk, grid)[3] for chunk in pixels.split(256)])
    _, h, w = (int(v) for v in grid)
    return {scene: {"token_ids": row, "h": h, "w": w} for scene, row in zip(scenes, codes)}


# What each stage's work file holds, as (file key, component of a loaded pipeline); "model" is the whole LLM.
STAGE_PARTS = {"tokenizer": {"visual": "mllm.visual", "vqmodel": "mllm.vqmodel"}, "vae": {"vae": "vae"},
               "decoder": {"embedder": "semantic_embedder", "transformer": "transformer"},
               "turbo": {"transformer_turbo": "transformer_turbo"}}


def seed_stages(folder: Path, work: Path, log=print):
    """Fill `work` with stage files taken from a built model folder (e.g. the shipped one), so that `--resume`
    trains only the stages after it: every stage its `training_summary.json` lists is written with the folder's
    weights (the LLM's earlier cycles all hold its final LLM) and the time that summary recorded. When the folder's
    vocabulary has grown (the newer tasks' words), the cycles before the growth hold its LLM without the new rows."""
    import copy

    from diffusers_llada_uni import LLaDA2UniPipeline

    pipe = LLaDA2UniPipeline.from_pretrained(folder)
    summary = json.loads((folder / "training_summary.json").read_text())
    done = [name for name in STAGES if name in summary["timings_s"]]
    base_vocabulary = len(build_tokenizer(VOCABULARY))
    before_growth = pipe.mllm
    if pipe.mllm.config.image_token_offset != base_vocabulary:
        before_growth = copy.deepcopy(pipe.mllm)
        before_growth.resize_token_embeddings(base_vocabulary + before_growth.config.codebook_size)
    first_grown = STAGES.index(next(name for name, phase in LLM_PHASES.items() if "family" in phase))
    work.mkdir(parents=True, exist_ok=True)
    for name in done:
        state = {}
        for key, path in STAGE_PARTS.get(name, {"model": "mllm"}).items():
            if key == "model" and STAGES.index(name) < first_grown:
                state[key] = before_growth.state_dict()
                continue
            module = pipe
            for attribute in path.split("."):
                module = getattr(module, attribute)
            state[key] = module.state_dict()
        metrics = {**(summary["metrics"].get(name) or {}), "seeded_from": str(folder)}
        torch.save({"state": state, "metrics": metrics, "seconds": summary["timings_s"][name]}, work / f"{name}.pt")
    log(f"seeded {work} with stages {done} from {folder}")


STAGES = ("tokenizer", "vae", "decoder", "turbo", *LLM_PHASES)
# Each LLM cycle starts from the one before it; a cycle whose rows hold round-tripped sources also needs the turbo
# decoder (`roundtrip.py` draws the training scenes with it).
NEEDS = {"tokenizer": (), "vae": (), "decoder": ("tokenizer", "vae"), "turbo": ("vae", "decoder"),
         "llm": ("tokenizer",)}
for _before, _cycle in zip(LLM_PHASES, list(LLM_PHASES)[1:]):
    NEEDS[_cycle] = (_before, "turbo") if LLM_PHASES[_cycle].get("rows", {}).get("roundtrip_rate") else (_before,)


class Stages:
    """Runs the named stages in order, timing each. A trained stage's modules are saved to `work/<name>.pt`; a stage
    this run does not train (not in `train`, or already saved and `resume`) is loaded from there when it exists."""

    def __init__(self, work: Path, train, resume: bool, log):
        self.work, self.train, self.resume, self.log = work, set(train), resume, log
        self.timings, self.metrics, self.ready = {}, {}, set()
        work.mkdir(parents=True, exist_ok=True)

    def run(self, name, modules: dict, train):
        path = self.work / f"{name}.pt"
        start = time.time()
        if name in self.train and not (self.resume and path.is_file()):
            missing = [need for need in NEEDS[name] if need not in self.ready]
            if missing:
                raise SystemExit(f"error: stage {name} needs {missing} trained first (in {self.work})")
            result, how = train(), "trained"
            seconds = round(time.time() - start, 1)
            state = {key: module.state_dict() for key, module in modules.items()}
            torch.save({"state": state, "metrics": result, "seconds": seconds}, path)
        elif path.is_file():
            saved = torch.load(path, weights_only=True)
            for key, module in modules.items():
                module.load_state_dict(saved["state"][key])
            # The time it took to train, when the file records it (the summary reports training time either way).
            result, how, seconds = saved["metrics"], f"loaded from {path}", saved.get("seconds")
        else:
            self.log(f"== {name}: not trained in this run and not in {self.work}; skipped")
            return None
        for module in modules.values():
            module.eval()
        self.ready.add(name)
        self.timings[name] = seconds
        self.metrics[name] = result
        self.log(f"== {name} {how} (trained in {seconds} s): {result}")
        return result


def build(out: Path, *, quick=False, seed=0, threads=None, work=None, stages=STAGES, resume=False,
          start_from=None, log=print) -> dict:
    """Train `stages` (the others are loaded from `work`) and, when every stage is ready, write the model to `out`."""
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"error: --stages has unknown names {unknown}; choose from {list(STAGES)}")
    if threads:
        torch.set_num_threads(threads)
    steps = QUICK if quick else FULL
    started = time.time()
    splits = split_scenes(seed=seed)
    train = splits["train"]
    pixel_train = train + new_colour_split(seed)["train"]  # the pixel side also learns to draw pink
    sizes = ShapesModelSizes()
    tokenizer = build_tokenizer(VOCABULARY)
    processor = build_processor(tokenizer, sizes)
    model = build_model(tokenizer, sizes, seed=seed)
    pixel = build_pixel_side(sizes, seed=seed)
    run = Stages(Path(work) if work else out.parent / f".{out.name}-work", stages, resume, log)
    if start_from is not None:
        seed_stages(Path(start_from), run.work, log)
    cache, extended = {}, []

    def codes():  # every scene's code grid, from the trained tokenizer
        if "codes" not in cache:
            cache["codes"] = scene_codes(model, processor, all_scenes(ALL_COLOURS))
        return cache["codes"]

    def pixel_data():  # (codes [N, 9], grid, normalised VAE latents) of the pixel side's training scenes
        if "pixel" not in cache:
            grids = codes()
            latents = vae_latents(pixel["vae"], to_target([render(scene) for scene in pixel_train]))
            cache["pixel"] = (torch.stack([grids[scene]["token_ids"] for scene in pixel_train]),
                              (grids[train[0]]["h"], grids[train[0]]["w"]), latents)
        return cache["pixel"]

    def train_decoder():
        train_codes, grid, latents = pixel_data()
        return train_normal(pixel["semantic_embedder"], pixel["transformer"], train_codes, latents, grid,
                            steps=steps["decoder"], seed=seed, log=log)

    def train_turbo():
        train_codes, grid, latents = pixel_data()
        # The teacher's 49-step CFG samples are the expensive part: a random subset of the training grids is enough.
        subset = torch.randperm(len(train_codes), generator=torch.Generator().manual_seed(seed))[:768]
        return distill_turbo(pixel["semantic_embedder"], pixel["transformer"], pixel["transformer_turbo"],
                             pixel["scheduler"], pixel["scheduler_turbo"], train_codes[subset], grid,
                             tuple(latents.shape[1:]), steps=steps["turbo"], teacher_steps=4 if quick else 49,
                             seed=seed, log=log)

    def roundtrip():  # the training scenes' codes as the model itself draws and reads them back
        if "roundtrip" not in cache:
            cache["roundtrip"] = roundtrip_codes(model, processor, pixel, codes(), train, seed=seed)
        return cache["roundtrip"]

    def train_language(phase, rows=None, family=None, draws=None, **options):  # task_rows / family_rows / cases
        mix, phase_seed = dict(rows or {}), seed + list(LLM_PHASES).index(phase)
        if mix.get("roundtrip_rate"):
            mix["roundtrip_of"] = roundtrip().__getitem__
        rows = task_rows(train, lambda scene: codes()[scene], seed=phase_seed, **mix)
        if family is not None:
            drawn = cases(train, seed, **(draws or {}))
            rows += family_rows(drawn, lambda scene: codes()[scene], seed=phase_seed, **family)
            random.Random(phase_seed).shuffle(rows)
        log(f"{phase}: {len(rows)} rows")
        return {"losses": train_llm(model, processor, rows, run.work / "trainer", steps=steps[phase],
                                    batch_size=LLM_BATCH, seed=seed, log=log, **options), "rows": len(rows)}

    run.run("tokenizer", {"visual": model.visual, "vqmodel": model.vqmodel}, lambda: train_tokenizer(
        model, processor, pixel_train, steps=steps["tokenizer"], seed=seed, log=log))
    run.run("vae", {"vae": pixel["vae"]}, lambda: train_vae(
        pixel["vae"], pixel_train, steps=steps["vae"], seed=seed, log=log))
    run.run("decoder", {"embedder": pixel["semantic_embedder"], "transformer": pixel["transformer"]}, train_decoder)
    run.run("turbo", {"transformer_turbo": pixel["transformer_turbo"]}, train_turbo)
    # The LLM's checkpoint holds the whole composite model, tokenizer included (its weights are frozen here).
    for phase, options in LLM_PHASES.items():
        if "family" in options and not extended:  # the newer tasks' words join the vocabulary first
            extended.append(extend_vocabulary(model, processor, EXTRA_WORDS))
        run.run(phase, {"model": model}, lambda: train_language(phase, **options))
    summary = {"timings_s": run.timings, "metrics": run.metrics, "steps": steps,
               "splits": {k: len(v) for k, v in splits.items()}, "pixel_scenes": len(pixel_train), "quick": quick}
    missing = [name for name in STAGES if name not in run.ready]
    if missing:
        log(f"stages {missing} are not ready: no model written (train them, then rerun with --resume)")
        return summary
    # The objective is each training run's choice (train_llm sets it), not part of the model: saved unset, as shipped.
    model.config.get_text_config().diffusion_training = None
    save_pipeline(out, processor, model, pixel)
    run.timings["stages_total"] = round(sum(run.timings[name] or 0.0 for name in STAGES), 1)  # one core after another
    run.timings["this_run"] = round(time.time() - started, 1)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the trained model into")
    parser.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test; the model is bad)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--work", type=Path, default=None, help="folder for stage checkpoints (default: .<out>-work)")
    parser.add_argument("--resume", action="store_true", help="load the stages a previous run finished")
    parser.add_argument("--start-from", type=Path, default=None,
                        help="a built model folder whose stages seed --work first (e.g. src/llada_uni_shapes/model: "
                             "with --resume, only the stages after it train)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated stages to train (the others are loaded from --work when there); e.g. "
                             "train the LLM and the pixel side in two processes after the tokenizer")
    args = parser.parse_args(argv)
    summary = build(args.out, quick=args.quick, seed=args.seed, threads=args.threads, work=args.work,
                    stages=[name.strip() for name in args.stages.split(",") if name.strip()], resume=args.resume,
                    start_from=args.start_from, log=lambda message: print(message, flush=True))
    print(json.dumps(summary["timings_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
