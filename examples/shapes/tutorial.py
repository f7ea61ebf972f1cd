"""Every figure of docs/tutorial.md, and the numbers it quotes, from one shapes-world model folder.

    python examples/shapes/tutorial.py --model shapes-model --out docs/figures              # a few minutes, 1 thread
    python examples/shapes/tutorial.py --model /tmp/untrained --out /tmp/figures --quick    # a smoke run (< 60 s)

Writes PNGs drawn with PIL only (tokens, attention_mask, trajectory, decoder_steps, guidance, family, lora_pink) and
`tutorial.json`. Everything runs through the public APIs the tutorial shows; the model folder is never modified (the
LoRA section trains an adapter in memory). An untrained folder (`examples.shapes.factory.save_untrained`) gives the
same files with meaningless pictures.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from examples.shapes.checker import read_scene, score_t2i  # noqa: E402
from examples.shapes.dataset import split_scenes  # noqa: E402
from examples.shapes.train_llm import task_rows  # noqa: E402
from examples.shapes.tutorial_family import family  # noqa: E402
from examples.shapes.world import (  # noqa: E402
    BACKGROUND,
    COLOURS,
    NEW_COLOURS,
    Scene,
    Shape,
    caption,
    new_colour_scenes,
    questions,
    render,
)

FULL = {"eval_prompts": 12, "normal_steps": 49, "lora_steps": 300, "lora_pink_scenes": 240,
        "lora_ordinary_scenes": 120, "lora_eval_scenes": 12}
QUICK = {"eval_prompts": 2, "normal_steps": 6, "lora_steps": 3, "lora_pink_scenes": 4, "lora_ordinary_scenes": 2,
         "lora_eval_scenes": 2}
SCALE = 4  # every 48 px image is drawn at 192 px
INK, MASKED = (30, 30, 30), (200, 200, 200)
BLOCK_COLOURS = [(120, 170, 230), (240, 160, 90), (120, 200, 140), (200, 130, 200)]
PROMPT_COLOUR = (175, 175, 175)
T2I_PROMPT = "a red circle on the left and a blue square at the top"
PINK_SCENE = Scene((Shape("pink", "circle", "left"),))


# ---------------------------------------------------------------------------------------------------- drawing

def font(size=14):
    return ImageFont.load_default(size=size)


def big(image, scale=SCALE):
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def text_size(text, size=14):
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=font(size))
    return box[2] - box[0], box[3] - box[1]


def captioned(image, text, size=14, top=None):
    """`image` with `text` centred below it (and `top` above it)."""
    lines_w, lines_h = text_size(text, size)
    top_w, top_h = text_size(top, size) if top else (0, 0)
    width = max(image.width, lines_w, top_w) + 8
    top_space = top_h + 8 if top else 0
    canvas = Image.new("RGB", (width, top_space + image.height + lines_h + 12), "white")
    draw = ImageDraw.Draw(canvas)
    if top:
        draw.multiline_text(((width - top_w) // 2, 2), top, fill=INK, font=font(size), align="center")
    canvas.paste(image, ((width - image.width) // 2, top_space))
    draw.multiline_text(((width - lines_w) // 2, top_space + image.height + 4), text, fill=INK, font=font(size),
                        align="center")
    return canvas


def row(images, gap=10, title=None, size=16):
    width = sum(i.width for i in images) + gap * (len(images) + 1)
    height = max(i.height for i in images) + 2 * gap
    title_h = text_size(title, size)[1] + gap if title else 0
    canvas = Image.new("RGB", (max(width, text_size(title, size)[0] + 2 * gap if title else 0), height + title_h),
                       "white")
    if title:
        ImageDraw.Draw(canvas).text((gap, gap // 2), title, fill=INK, font=font(size))
    x = gap
    for image in images:
        canvas.paste(image, (x, title_h + gap))
        x += image.width + gap
    return canvas


def column(images, gap=6):
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * len(images)),
                       "white")
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height + gap
    return canvas


def cell_grid(labels, h, w, cell=64, fills=None, size=18):
    """An h x w grid of cells with a label in each (`fills`: one RGB per cell, default white)."""
    canvas = Image.new("RGB", (w * cell + 1, h * cell + 1), "white")
    draw = ImageDraw.Draw(canvas)
    for index, label in enumerate(labels):
        y, x = divmod(index, w)
        fill = fills[index] if fills else (255, 255, 255)
        draw.rectangle([x * cell, y * cell, (x + 1) * cell, (y + 1) * cell], fill=fill, outline=INK)
        tw, th = text_size(str(label), size)
        draw.text((x * cell + (cell - tw) // 2, y * cell + (cell - th) // 2 - 2), str(label), fill=INK, font=font(size))
    return canvas


def mix(a, b, amount):
    return tuple(round(x + (y - x) * amount) for x, y in zip(a, b))


def veil(image, cells, h, w, mark="?"):
    """Grey out the given cells of an upscaled grid image (positions still masked) and print `mark` in them."""
    image = image.copy()
    draw = ImageDraw.Draw(image, "RGBA")
    ch, cw = image.height // h, image.width // w
    for index in cells:
        y, x = divmod(index, w)
        draw.rectangle([x * cw, y * ch, (x + 1) * cw - 1, (y + 1) * ch - 1], fill=(*MASKED, 220))
        tw, th = text_size(mark, 24)
        draw.text((x * cw + (cw - tw) // 2, y * ch + (ch - th) // 2 - 4), mark, fill=INK, font=font(24))
    return image


# ---------------------------------------------------------------------------------------------------- model calls

class Tutorial:
    """The loaded pipeline, both decoders on its parts, and one method per figure (each adds to `numbers`)."""

    def __init__(self, folder, out, settings, seed=0, log=print):
        from diffusers_llada_uni import LLaDA2UniDecoderPipeline, LLaDA2UniPipeline

        self.pipe = LLaDA2UniPipeline.from_pretrained(folder)
        self.pipe.set_progress_bar_config(disable=True)
        self.model, self.processor = self.pipe.mllm, self.pipe.processor
        self.turbo = LLaDA2UniDecoderPipeline(self.pipe.semantic_embedder, self.pipe.transformer_turbo,
                                              self.pipe.vae, self.pipe.scheduler_turbo)
        self.normal = LLaDA2UniDecoderPipeline(self.pipe.semantic_embedder, self.pipe.transformer, self.pipe.vae,
                                               self.pipe.scheduler)
        for decoder in (self.turbo, self.normal):
            decoder.set_progress_bar_config(disable=True)
        drawing = self.model.generation_config  # the size the model draws at: 48 px, 16 px per token
        self.rm = drawing.pixels_per_token // 16
        self.grid = self.processor.image_processor.generation_grid(drawing.image_height, drawing.image_width,
                                                                   drawing.pixels_per_token)
        self.block_length = self.model.config.get_text_config().block_length
        self.out, self.settings, self.seed, self.log = Path(out), settings, seed, log
        self.numbers = {}

    def generator(self):
        return torch.Generator().manual_seed(self.seed)

    def codes(self, images):
        """The model's own image tokenizer: a list of images -> LongTensor [N, h*w] of offset-free codes."""
        batch = self.processor.image_processor.preprocess(images, mode="none")
        codes = self.model.get_image_tokens(batch["pixel_values"], batch["image_grid_thw"])
        return codes.reshape(len(images), -1)

    def decode(self, codes):
        """Codes [N, h*w] -> N PIL images through the turbo decoder, every image from the same seed."""
        return self.turbo(image_tokens=codes, grid_size=self.grid, resolution_multiplier=self.rm,
                    generator=self.generator()).images

    def t2i_tokens(self, prompts, **options):
        """`generate_image_tokens` on the processor's text-to-image prompts: (codes [B, h*w], forward passes)."""
        batch = self.processor(text=prompts, mode="t2i", grid=self.grid)
        result = self.model.generate_image_tokens(
            batch["input_ids"], attention_mask=batch["attention_mask"], uncond_input_ids=batch["uncond_input_ids"],
            uncond_attention_mask=batch["uncond_attention_mask"], height=self.grid[0], width=self.grid[1],
            block_length=self.block_length, **options)
        return result["token_ids"], result["num_forward_passes"]

    def save(self, image, name):
        image.save(self.out / f"{name}.png")
        self.log(f"wrote {self.out / name}.png ({image.width} x {image.height})")

    # ------------------------------------------------------------------------------------------------ (a) tokens

    def tokens(self):
        scenes = [Scene((Shape("red", "circle", "left"),)),
                  Scene((Shape("red", "circle", "left"), Shape("blue", "square", "top"))),
                  Scene((Shape("green", "triangle", "center"),))]
        images = [render(scene) for scene in scenes]
        codes = self.codes(images)
        rebuilt = self.decode(codes)
        h, w = self.grid
        background = int(self.codes([Image.new("RGB", images[0].size, BACKGROUND)])[0, 0])
        lines = []
        for scene, image, grid, again in zip(scenes, images, codes.tolist(), rebuilt):
            fills = [(235, 235, 235) if code == background else (255, 255, 255) for code in grid]
            lines.append(row([captioned(big(image), "image (48 px)"),
                              captioned(cell_grid(grid, h, w, cell=big(image).width // w, fills=fills),
                                        "its 3 x 3 codes"),
                              captioned(big(again), "decoded from the codes")], title=caption(scene)))
        self.save(column(lines), "tokens")
        flat = [code for grid in codes.tolist() for code in grid]
        self.numbers["tokens"] = {
            "scenes": [{"caption": caption(s), "codes": c} for s, c in zip(scenes, codes.tolist())],
            "background_code": background, "grid": list(self.grid),
            "codebook_size": self.model.config.codebook_size, "distinct_codes_in_figure": len(set(flat)),
            # The same shape in the same cell should get the same code whatever else is in the picture.
            "red_circle_left_code_stable": codes[0, 3].item() == codes[1, 3].item(),
        }
        return codes

    # ------------------------------------------------------------------------------------------------ (b) the mask

    def attention_mask(self):
        batch = self.processor(text="a red circle on the left", mode="t2i", grid=self.grid)
        seen = []

        def record(module, args, kwargs):
            seen.append(kwargs["attention_mask"][0, 0].cpu())

        # Peek at the mask the model is really given: without the block cache the last forward sees the whole canvas.
        hook = self.model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            self.model.generate(batch["input_ids"], gen_length=self.grid[0] * self.grid[1], steps=8,
                                block_length=self.block_length, use_block_cache=False)
        finally:
            hook.remove()
        mask = max(seen, key=lambda m: m.numel()).bool()
        prompt_length, total, L = batch["input_ids"].shape[1], mask.shape[0], self.block_length
        generated = self.grid[0] * self.grid[1]
        cell = 11
        tokens = self.processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
        fill = total - prompt_length - generated
        names = tokens + ["<|mask|> (image)"] * generated + ["<|mask|> (block fill)"] * fill
        label_w = max(text_size(n, 10)[0] for n in names) + 12
        grid = Image.new("RGB", (label_w + total * cell + 1, 40 + total * cell + 1), "white")
        draw = ImageDraw.Draw(grid)

        def colour(position):
            base = BLOCK_COLOURS[(position // L) % len(BLOCK_COLOURS)]
            return mix(base, PROMPT_COLOUR, 0.55) if position < prompt_length else base

        for key in range(total):  # a strip on top: the key's block, grey-tinted where it is prompt
            draw.rectangle([label_w + key * cell, 26, label_w + (key + 1) * cell - 1, 36], fill=colour(key))
        for block in range(total // L):
            draw.text((label_w + block * L * cell + 2, 4), f"block {block}", fill=INK, font=font(12))
        for query in range(total):
            y = 40 + query * cell
            draw.text((4, y - 1), names[query], fill=INK if query < prompt_length else (90, 60, 20), font=font(10))
            for key in range(total):
                x = label_w + key * cell
                fill = colour(query) if mask[query, key] else (255, 255, 255)
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill, outline=(235, 235, 235))
        for block in range(1, total // L):  # block boundaries
            edge = block * L * cell
            draw.line([label_w + edge, 26, label_w + edge, 40 + total * cell], fill=INK)
            draw.line([label_w, 40 + edge, label_w + total * cell, 40 + edge], fill=INK)
        self.save(captioned(grid, "rows: queries (the token that attends), columns: keys; filled = may attend.\n"
                                  "Pale = prompt, bright = masked positions the model fills in."), "attention_mask")
        self.numbers["attention_mask"] = {
            "prompt_tokens": prompt_length, "generated_tokens": generated, "canvas": total, "block_length": L,
            "blocks": total // L, "first_image_block": prompt_length // L,
            "image_tokens_in_first_block": min(generated, L - prompt_length % L),
        }

    # ------------------------------------------------------------------------------------------------ (c) trajectory

    def trajectory(self):
        background = self.numbers["tokens"]["background_code"]
        h, w = self.grid
        count = h * w
        batch = self.processor(text=T2I_PROMPT, mode="t2i", grid=self.grid)
        # What the pipeline runs (guidance 2, image codes only) with the per-forward history kept, but threshold 1.0:
        # no confidence beats it, so every forward commits exactly its quota, the most confident positions first. (At
        # the default 0.95 the trained model is sure of the whole grid at once and commits it in one forward.)
        out = self.model.generate_image_tokens(
            batch["input_ids"], attention_mask=batch["attention_mask"], uncond_input_ids=batch["uncond_input_ids"],
            uncond_attention_mask=batch["uncond_attention_mask"], height=h, width=w, cfg_scale=2.0, steps=8,
            block_length=self.block_length, threshold=1.0, output_history=True)
        mask_id, offset = self.model.config.get_text_config().mask_token_id, self.model.config.image_token_offset
        history = [state[0, :count] for state in out["history"]]
        committed_at = [None] * count
        for step, state in enumerate(history, start=1):
            for index in range(min(count, len(state))):
                if committed_at[index] is None and state[index] != mask_id:
                    committed_at[index] = step
        final = history[-1]
        codes = final - offset
        is_code = (codes >= 0) & (codes < self.model.config.codebook_size) & (final != mask_id)
        prompt_length = batch["input_ids"].shape[1]
        blocks = [(prompt_length + i) // self.block_length for i in range(count)]
        steps = len(history)
        fills = [mix((255, 245, 200), (200, 60, 40), (s - 1) / max(steps - 1, 1)) if s else MASKED
                 for s in committed_at]
        labels = [f"step {s}\nblock {b}" if s else f"never\nblock {b}" for s, b in zip(committed_at, blocks)]
        heat = captioned(cell_grid(labels, h, w, cell=96, fills=fills, size=14),
                         "the forward at which each\nimage token was committed")
        # The partly decoded picture after every forward: masked cells are drawn as background and greyed out.
        partial = torch.stack([torch.where(((s[:count] - offset) >= 0) & ((s[:count] - offset) <
                                            self.model.config.codebook_size) & (s[:count] != mask_id),
                                           s[:count] - offset, torch.tensor(background)) for s in history])
        pictures = self.decode(partial)
        strip = []
        for step, (state, picture) in enumerate(zip(history, pictures), start=1):
            masked = [i for i in range(count) if state[i] == mask_id]
            other = [i for i in range(count) if state[i] != mask_id and not is_code[i]]
            picture = veil(veil(big(picture), masked, h, w), other, h, w, mark="x")
            strip.append(captioned(picture, f"after forward {step}\n{count - len(masked)} of {count} image tokens"))
        self.save(row([heat] + strip, title=f'"{T2I_PROMPT}": generate_image_tokens(..., output_history=True)'),
                  "trajectory")
        self.numbers["trajectory"] = {
            "prompt": T2I_PROMPT, "prompt_tokens": prompt_length, "forward_passes": out["num_forward_passes"],
            # the canvas is rounded up to whole blocks: these masks after the image are denoised too, then dropped
            "block_fill_positions": -(prompt_length + count) % self.block_length, "committed_at": committed_at,
            "blocks": blocks, "non_image_tokens": int((~is_code).sum()),
        }

    # ------------------------------------------------------------------------------------------------ (d) decoder

    def decoder_steps(self, codes):
        from diffusers_llada_uni.pipeline_llada2_uni_decoder import decode_latents

        codes = codes[1:2]  # the two-shape scene of figure (a)
        lines, numbers = [], {}
        for name, pipe, steps in (("turbo", self.turbo, 8), ("normal", self.normal, self.settings["normal_steps"])):
            noise = torch.randn(pipe.latent_shape(1, self.grid, self.rm), generator=self.generator())
            states = [noise]

            def keep(pipe_, step, t, tensors):
                states.append(tensors["latents"].float().clone())
                return {}

            pipe(image_tokens=codes, grid_size=self.grid, resolution_multiplier=self.rm, latents=noise,
                 generator=self.generator(), callback_on_step_end=keep)
            times = pipe.scheduler.times.float()
            shown = list(range(1, steps + 1)) if steps <= 8 else sorted({1, 2, 4, 8, 16, 24, 32, 40, steps})
            pictures = decode_latents(pipe.vae, torch.cat([states[i] for i in shown]), "pil")
            lines.append(row([captioned(big(p), f"after step {i}\nt = {float(times[i]):.2f}")
                              for i, p in zip(shown, pictures)], title=f"{name} decoder: the latents after each step"))
            if name == "normal":
                # Euler steps x <- x + (t_next - t) v, so v and the clean estimate x + (1 - t) v follow from two states.
                estimates = []
                for i in shown:
                    velocity = (states[i] - states[i - 1]) / (times[i] - times[i - 1])
                    estimates.append(states[i - 1] + (1 - times[i - 1]) * velocity)
                pictures = decode_latents(pipe.vae, torch.cat(estimates), "pil")
                lines.append(row([captioned(big(p), f"step {i}") for i, p in zip(shown, pictures)],
                                 title="normal decoder: its clean-image estimate at each step"))
            numbers[name] = {"steps": steps, "shown": shown}
        self.save(column(lines), "decoder_steps")
        self.numbers["decoder_steps"] = numbers

    # ------------------------------------------------------------------------------------------------ (e) guidance

    def guidance(self):
        rng = random.Random(self.seed)
        scenes = [Scene((Shape("red", "circle", "left"), Shape("blue", "square", "top")))]
        scenes += rng.sample(split_scenes(seed=self.seed)["test"], self.settings["eval_prompts"] - 1)
        prompts = [caption(scene) for scene in scenes]
        truth = self.codes([render(scene) for scene in scenes])
        panels, numbers = [], {"prompts": len(prompts), "cfg": {}, "threshold": {}}
        runs = [("cfg", scale, {"cfg_scale": scale, "threshold": 0.95}) for scale in (1.0, 2.0, 4.0)]
        runs += [("threshold", t, {"cfg_scale": 2.0, "threshold": t}) for t in (0.95, 0.9, 0.7)]
        for kind, value, options in runs:
            codes, passes = [], []
            for prompt in prompts:  # one at a time: the forward count is per image
                tokens, count = self.t2i_tokens([prompt], steps=8, **options)
                codes.append(tokens[0])
                passes.append(count)
            codes = torch.stack(codes)
            images = self.decode(codes)
            scores = [score_t2i(image, scene) for image, scene in zip(images, scenes)]
            numbers[kind][f"{value:g}"] = {
                "forward_passes": passes[0], "mean_forward_passes": sum(passes) / len(passes),
                "code_accuracy": round((codes == truth).float().mean().item(), 4),
                "checker_all_right": round(sum(all(s[k] for k in ("color", "shape", "position")) for s in scores)
                                           / len(scores), 4),
            }
            label = f"guidance {value:g}" if kind == "cfg" else f"threshold {value:g}"
            panels.append((kind, captioned(big(images[0]), f"{label}\n{passes[0]} forwards")))
        lines = [row([p for k, p in panels if k == kind], title=title) for kind, title in (
            ("cfg", "LLM classifier-free guidance (threshold 0.95)"),
            ("threshold", "confidence threshold (guidance 2)"))]
        self.save(captioned(column(lines), f'"{prompts[0]}"'), "guidance")
        self.numbers["guidance"] = numbers

    # ------------------------------------------------------------------------------------------------ (f) LoRA

    def lora(self):
        from transformers import Trainer, TrainingArguments

        from transformers_llada_uni import LLaDA2UniDataCollator
        from transformers_llada_uni.peft_llada2_uni import get_lora_model

        settings, rng = self.settings, random.Random(self.seed)
        pink = [s for s in new_colour_scenes() if s != PINK_SCENE]
        rng.shuffle(pink)
        held_out, pink_train = [PINK_SCENE] + pink[:settings["lora_eval_scenes"] - 1], \
            pink[settings["lora_eval_scenes"] - 1:][:settings["lora_pink_scenes"]]
        splits = split_scenes(seed=self.seed)
        ordinary_train = rng.sample(splits["train"], settings["lora_ordinary_scenes"])
        ordinary_test = rng.sample(splits["test"], settings["lora_eval_scenes"])
        before = self.lora_report(held_out, ordinary_test)

        # Rows as the base model was trained (train_llm.task_rows); a first pass lists every scene the rows need
        # (edits add scenes), so the image tokenizer runs once, in one batch.
        needed = {}
        task_rows(pink_train + ordinary_train, lambda s: needed.setdefault(s, None), seed=self.seed)
        scenes = list(needed)
        codes = self.codes([render(s) for s in scenes])
        h, w = self.grid
        table = {s: {"token_ids": c, "h": h, "w": w} for s, c in zip(scenes, codes)}
        rows = task_rows(pink_train + ordinary_train, table.__getitem__, seed=self.seed)

        # Two things were never trained: the word "pink" and the codes that only pink patches get. Their input
        # embeddings become trainable rows, the output head is trained whole (LoRA itself cannot reach either).
        # The world is compositional per cell, so single-shape scenes show every cell content there is.
        singles = [s for s in new_colour_scenes() if len(s.shapes) == 1]
        ordinary_singles = [Scene((Shape(c, s.shapes[0].shape, s.shapes[0].position),)) for c in COLOURS
                            for s in singles if s.shapes[0].colour == "pink"]
        ordinary_codes = set(self.codes([render(s) for s in ordinary_singles]).flatten().tolist())
        pink_codes = sorted(set(self.codes([render(s) for s in singles]).flatten().tolist()) - ordinary_codes)
        offset = self.model.config.image_token_offset
        pink_id = self.processor.tokenizer.convert_tokens_to_ids("pink")
        text_config = self.model.config.get_text_config()
        text_config.diffusion_training = {"mask_ratio_min": 0.05, "mask_ratio_max": 1.0, "loss_weighting": "inverse_t"}
        new_ids = [pink_id] + [offset + code for code in pink_codes]
        model = get_lora_model(self.model, "default", r=16, lora_alpha=32, lora_dropout=0.0,
                               modules_to_save=["lm_head"], trainable_token_indices={"word_embeddings": new_ids})
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        collator = LLaDA2UniDataCollator(self.processor, block_length=text_config.block_length)
        started = time.time()
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(
                output_dir=scratch, per_device_train_batch_size=16, max_steps=settings["lora_steps"],
                learning_rate=2e-3, lr_scheduler_type="cosine", warmup_steps=settings["lora_steps"] // 10,
                logging_steps=max(1, settings["lora_steps"] // 10), save_strategy="no", report_to=[],
                remove_unused_columns=False, label_names=["labels"], use_cpu=True, seed=self.seed,
                dataloader_num_workers=0, disable_tqdm=True)
            trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
            trainer.train()
        seconds = time.time() - started
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        self.pipe.mllm = self.model = model.merge_and_unload().eval()
        after = self.lora_report(held_out, ordinary_test)

        panels = []
        for name, report in (("before", before), ("after", after)):
            read = report["pink_image_read_as"]
            panels.append(captioned(big(report["image"]), f"{name} LoRA\nchecker reads: {read}"))
        question = captioned(big(render(PINK_SCENE)), "\n".join(
            f"{name}: {report['answer']!r}" for name, report in (("before", before), ("after", after))),
            top="What colour is the circle?")
        self.save(row(panels + [question], title=f'"{caption(PINK_SCENE)}"'), "lora_pink")
        for report in (before, after):
            del report["image"]
        self.numbers["lora"] = {
            "steps": settings["lora_steps"], "rows": len(rows), "pink_training_scenes": len(pink_train),
            "ordinary_training_scenes": len(ordinary_train), "held_out_pink_scenes": len(held_out),
            "pink_only_codes": len(pink_codes), "trainable_parameters": trainable, "seconds": round(seconds, 1),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "before": before, "after": after,
        }

    def lora_report(self, pink_scenes, ordinary_scenes):
        """Held-out scores: text-to-image read back by the checker, and colour questions answered."""
        report = {}
        for name, scenes in (("pink", pink_scenes), ("ordinary", ordinary_scenes)):
            images = self.pipe([caption(s) for s in scenes], generator=self.generator()).images
            drawn = [score_t2i(image, scene)["color"] for image, scene in zip(images, scenes)]
            asked = [next((q, a) for q, a in questions(s) if a in COLOURS or a in NEW_COLOURS) for s in scenes]
            answers = self.pipe(image=[render(s) for s in scenes], question=[q for q, _ in asked],
                                max_new_tokens=self.block_length).text
            report[f"{name}_t2i_colour"] = round(sum(drawn) / len(drawn), 4)
            report[f"{name}_colour_answers"] = round(sum(a.strip() == t for a, (_, t) in zip(answers, asked))
                                                     / len(asked), 4)
            if name == "pink":
                report["image"] = images[0]
                seen = read_scene(images[0])
                report["pink_image_read_as"] = caption(seen) if seen else "no valid scene"
                report["answer"] = self.pipe(image=render(PINK_SCENE), question="What colour is the circle?",
                                             max_new_tokens=self.block_length).text[0].strip()
        return report


def run(folder, out, *, quick=False, seed=0, log=print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, timings = time.time(), {}
    tutorial = Tutorial(folder, out, QUICK if quick else FULL, seed=seed, log=log)

    def timed(name, call):
        start = time.time()
        result = call()
        timings[name] = round(time.time() - start, 1)
        return result

    with torch.no_grad():
        codes = timed("tokens", tutorial.tokens)
        timed("attention_mask", tutorial.attention_mask)
        timed("trajectory", tutorial.trajectory)
        timed("decoder_steps", lambda: tutorial.decoder_steps(codes))
        timed("guidance", tutorial.guidance)
        tutorial.numbers["family"] = timed("family", lambda: family(tutorial))
    timed("lora", tutorial.lora)  # trains: outside no_grad
    timings["total"] = round(time.time() - started, 1)
    summary = {"model": str(folder), "quick": quick, "seed": seed, **tutorial.numbers, "timings_s": timings}
    (out / "tutorial.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out / 'tutorial.json'}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a shapes-world model folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs and tutorial.json")
    parser.add_argument("--quick", action="store_true", help="fewer prompts and steps (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if not (args.model / "model_index.json").is_file():
        parser.error(f"--model {args.model} is not a model folder (no model_index.json)")
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = run(args.model, args.out, quick=args.quick, seed=args.seed)
    print(json.dumps(summary["timings_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
