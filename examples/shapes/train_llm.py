"""Stage 4: the MoE diffusion LLM on the three tasks, with the project's own collator, objective and `Trainer`.

Every image enters as its codes from the (frozen) stage-1 tokenizer, so the vision tower does not run per step: rows
carry `image_tokens` / `target_image_tokens`. Rows: one caption per scene (text-to-image), every question of the scene
(understanding) and its edits (editing); a tenth of the text-to-image and editing rows have their text replaced by
`<uncondition>`, which is what the unconditional branch of classifier-free guidance feeds the model.
"""

import random

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from examples.shapes.world import WHERE, caption, edits, questions
from transformers_llada_uni import LLaDA2UniDataCollator

UNCONDITION = "<uncondition>"


def task_rows(scenes, codes_of, *, uncondition_rate=0.1, t2i_repeats=4, edit_repeats=2, lookup_repeats=1,
              roundtrip_of=None, roundtrip_rate=0.0, seed=0) -> list:
    """Collator rows for `scenes`; `codes_of(scene)` gives its 3 x 3 code grid as a dict (token_ids, h, w).

    A scene has one caption and three edits but 7-13 questions, so captions and edits are repeated (`t2i_repeats`,
    `edit_repeats`; each copy draws its own masks in training and its own `<uncondition>` coin) to keep the three
    tasks near one third of the rows each. `lookup_repeats` repeats the questions that name a place ("What colour
    is the shape on the left?"): the model must find an image token by where it sits, the hardest thing to learn.
    With `roundtrip_of` (scene -> codes of the model's own drawing of it, `roundtrip.roundtrip_codes`), a share
    `roundtrip_rate` of the question and edit rows take their source image in that form; targets stay clean codes."""
    rng, coin = random.Random(seed), random.Random(f"roundtrip/{seed}")  # own coin: the rows stay the same
    rows = []

    def source(scene, codes):
        return roundtrip_of(scene) if roundtrip_of is not None and coin.random() < roundtrip_rate else codes

    for scene in scenes:
        codes = codes_of(scene)
        for _ in range(t2i_repeats):
            text = UNCONDITION if rng.random() < uncondition_rate else caption(scene)
            rows.append({"prompt": text, "target_image_tokens": codes})
        for q, a in questions(scene):
            repeats = lookup_repeats if any(place in q for place in WHERE.values()) else 1
            rows += [{"image_tokens": source(scene, codes), "question": q, "answer": a} for _ in range(repeats)]
        for instruction, edited in edits(scene, rng):
            for _ in range(edit_repeats):
                text = UNCONDITION if rng.random() < uncondition_rate else instruction
                rows.append({"image_tokens": source(scene, codes), "instruction": text,
                             "target_image_tokens": codes_of(edited)})
    rng.shuffle(rows)
    return rows


class _Log(TrainerCallback):
    def __init__(self, log):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.log(f"llm step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}")


class _Unwrap:
    """Collates a Trainer batch of one prepared batch (see `length_batches`)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, items):
        (batch,) = items
        return self.collator(batch)


OBJECTIVE = {"mask_ratio_min": 0.05, "mask_ratio_max": 1.0, "loss_weighting": "inverse_t"}


def length_batches(rows, collator, batch_size, seed=0, bucket=16) -> list:
    """`rows` cut into batches of similar length (rows bucketed by `bucket` tokens, shuffled within a bucket, batches
    shuffled): a batch is as long as its longest row, and the interleaved rows are twice as long as most others."""
    rng = random.Random(f"batches/{seed}")
    keyed = [(len(collator.encode(row, i)["input_ids"]) // bucket, rng.random(), i) for i, row in enumerate(rows)]
    order = [i for *_, i in sorted(keyed)]
    batches = [[rows[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def train_llm(model, processor, rows, output_dir, *, steps=3000, batch_size=32, lr=2e-3, objective=None, seed=0,
              by_length=False, log=print):
    """Full training of the backbone (the vision tokenizer stays frozen) with the stock Trainer and the config's
    `diffusion_training` set to `objective` (default `OBJECTIVE`, the ELBO); returns the loss every 100 steps.
    `by_length`: batches of similar length (`length_batches`; the Trainer then sees one prepared batch per item)."""
    text_config = model.config.get_text_config()
    text_config.diffusion_training = dict(objective or OBJECTIVE)
    for module in (model.visual, model.vqmodel):
        module.requires_grad_(False)
    collator = LLaDA2UniDataCollator(processor, block_length=text_config.block_length)
    if by_length:
        rows = length_batches(rows, collator, batch_size, seed)
        batch_size, collator = 1, _Unwrap(collator)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="cosine", warmup_steps=min(100, steps // 10), weight_decay=0.0, logging_steps=100,
        save_strategy="no", report_to=[], remove_unused_columns=False, use_cpu=True, seed=seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    torch.manual_seed(seed)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator, callbacks=[_Log(log)])
    trainer.train()
    model.eval()
    return [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]


__all__ = ["task_rows", "train_llm"]
