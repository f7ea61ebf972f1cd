"""Batches for fine-tuning LLaDA2.0-Uni with the stock `Trainer`: dataset rows -> input_ids / attention_mask / labels
(+ pixel_values), ready for the masked-diffusion objective of `forward(labels=...)`.

The task of each row follows its fields:

| task | fields | supervised |
|---|---|---|
| text | `prompt`, `response` (or `messages`: a chat ending with the assistant's turn) | the response + EOS |
| understanding | `image` (or `image_tokens`), `question`, `answer` | the answer + EOS |
| text-to-image | `prompt`, `target_image` (or `target_image_tokens`) | the h*w image codes |
| editing | `image` (or `image_tokens`), `instruction`, `target_image` (or `target_image_tokens`) | the h*w codes |
| thinking text-to-image | `prompt`, `thinking` (the reasoning), `target_image` (or `target_image_tokens`) | the reasoning, the output header and the h*w codes |
| interleaved | `prompt` (+ optional `image` / `image_tokens`), `segments`: the response in order, each `{"text": ...}` or `{"image": ...}` / `{"image_tokens": ...}` | every segment (image blocks whole) + EOS |

`image` / `image_tokens` of understanding, editing and interleaved rows may hold a list: several pictures, in order
(two-picture questions, multi-reference edits). A row is the unconditional branch of classifier-free guidance when its
text (`prompt` / `instruction`) is exactly `<uncondition>` or it has `unconditional=True`: the prompt is then the
processor's unconditional template for its task (as `return_uncond` writes it), and only the target is kept.

Prompts come from the processor's templates (the ones generation uses). Text targets end with EOS, repeated up to
the end of its block (`pad_to_block`), which is what block decoding has to produce after an answer. Image targets are
the output header's h*w positions: codes when given as `*_image_tokens` (offset-free codes: a [h, w] grid, a
`(h, w, codes)` triple or `{"token_ids", "h", "w"}`), else `<|image|>` placeholders that the model fills from
`pixel_values` with the frozen vision tokenizer. Rows are right-padded (blocks stay aligned with positions).

Use it with `TrainingArguments(remove_unused_columns=False)`: the Trainer would otherwise drop these columns.

The batches are clean (nothing is masked here), for the masked-diffusion objectives ("block", "full") that `forward`
noises itself; which one runs is the model's setting (`config.diffusion_training`), whatever ids a batch holds.
"""

import contextlib
import logging
import numbers
from typing import Optional

import torch

from .prompting_llada2_uni import UNCONDITION

TASK_FIELDS = {
    "interleaved": ("prompt", "segments"),
    "editing": ("instruction",),
    "understanding": ("question", "answer"),
    "text-to-image": ("prompt",),
    "text": ("prompt", "response"),
}


class LLaDA2UniDataCollator:
    r"""
    Args:
        processor (`LLaDA2UniProcessor`): tokenizer, image processor and prompt templates.
        block_length (`int`, defaults to 32): the diffusion block (EOS padding of text targets reaches its end).
        max_length (`int`, *optional*): longest allowed sequence (e.g. the model's `max_position_embeddings`).
        pad_to_block (`bool`, defaults to True): repeat EOS after a text target up to the end of its block.
        image_mode (`str`, defaults to "edit"): image-processor path for generation targets and edit sources
            ("edit": the original's ~512 px budget; "none": as given, sides multiples of the patch size).
        understanding_image_mode (`str`, defaults to "understanding"): the path for understanding inputs.
    """

    def __init__(self, processor, *, block_length: int = 32, max_length: Optional[int] = None,
                 pad_to_block: bool = True, image_mode: str = "edit", understanding_image_mode: str = "understanding"):
        if not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"`block_length` must be a positive int, got {block_length!r}.")
        self.processor = processor
        self.block_length = block_length
        self.max_length = max_length
        self.pad_to_block = pad_to_block
        self.image_mode = image_mode
        self.understanding_image_mode = understanding_image_mode
        self.eos_id = processor.eos_token_id
        self.pad_id = processor.pad_token_id if processor.pad_token_id is not None else self.eos_id
        if self.eos_id is None:
            raise ValueError("the processor's tokenizer has no EOS token; text targets need one.")

    # ------------------------------------------------------------------ rows

    def task_of(self, row: dict, index: int) -> str:
        if not isinstance(row, dict):
            raise ValueError(f"row {index}: expected a dict of fields, got {type(row).__name__}.")
        # A field counts when it holds something: rows of a `datasets` table carry every column, None where unused.
        if _present(row, "messages"):
            return "text"
        has_image = _present(row, "image") or _present(row, "image_tokens")
        has_target = _present(row, "target_image") or _present(row, "target_image_tokens")
        if _present(row, "segments"):
            task = "interleaved"
        elif _present(row, "instruction"):
            task = "editing"
        elif _present(row, "question") or _present(row, "answer"):
            task = "understanding"
        elif has_target:
            task = "text-to-image"
        else:
            task = "text"
        missing = [name for name in TASK_FIELDS[task] if not _present(row, name)]
        if task in ("editing", "understanding") and not has_image:
            missing.append("image (or image_tokens)")
        if task in ("editing", "text-to-image") and not has_target:
            missing.append("target_image (or target_image_tokens)")
        if missing:
            raise ValueError(f"row {index} ({task}): missing or empty field(s) {', '.join(missing)}; fields given: "
                             f"{', '.join(sorted(k for k in row if _present(row, k))) or 'none'}.")
        return task

    def encode(self, row: dict, index: int = 0) -> dict:
        """One row -> {"input_ids", "labels" (lists), "pixel_values" / "image_grid_thw" (tensors or None)}."""
        task = self.task_of(row, index)
        pixels = []
        if task == "text":
            prompt, target_text = self._text_prompt(row, index)
            return self._with_text_target(prompt, target_text, pixels, index)
        if task == "understanding":
            inputs = self._image_inputs(row, "image", self.understanding_image_mode)
            batch = self.processor(text=row["question"], mode="understanding", return_tensors=None, **inputs)
            self._collect(batch, pixels)
            return self._with_text_target(batch["input_ids"][0], row["answer"], pixels, index)
        if task == "interleaved":
            return self._interleaved(row, pixels, index)
        if task == "text-to-image":
            grid, codes = self._target(row, pixels)
            thinking = _present(row, "thinking")
            unconditional = _unconditional(row, "prompt")
            with _quiet(self.processor, unconditional):
                batch = self.processor(text=row["prompt"], mode="t2i", grid=grid, thinking=thinking,
                                       return_uncond=unconditional, return_tensors=None)
            if unconditional:  # the guidance branch's prompt, output header included
                return self._with_image_target(batch["uncond_input_ids"][0], codes, pixels, index)
            if thinking:
                reasoning = self._text_ids(row["thinking"], "thinking", index)
                codes = reasoning + self.processor.image_header_ids(*grid) + codes
            return self._with_image_target(batch["input_ids"][0], codes, pixels, index)
        inputs = self._image_inputs(row, "image", self.image_mode)
        unconditional = _unconditional(row, "instruction")
        with _quiet(self.processor, unconditional):
            batch = self.processor(text=row["instruction"], mode="edit", return_uncond=unconditional,
                                   return_tensors=None, **inputs)
        self._collect(batch, pixels)
        if unconditional:
            batch = {"input_ids": batch["uncond_input_ids"]}
        header = [s for s in self.processor.split_generation(batch["input_ids"][0]) if s["type"] == "image"][-1]
        grid, codes = self._target(row, pixels)
        if grid != (header["height"], header["width"]):
            raise ValueError(f"row {index} (editing): the target image's token grid {grid} differs from the source's "
                             f"{(header['height'], header['width'])}; give images of the same size.")
        return self._with_image_target(batch["input_ids"][0], codes, pixels, index)

    def _text_prompt(self, row, index):
        if _present(row, "messages"):
            messages = row["messages"]
            if not messages or not isinstance(messages, list) or messages[-1].get("role") != "assistant":
                raise ValueError(f"row {index} (text): `messages` must end with the assistant's turn.")
            prompt = self.processor.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
            prompt = prompt["input_ids"] if isinstance(prompt, dict) else prompt
            prompt = prompt[0] if prompt and isinstance(prompt[0], list) else prompt
            return list(prompt), messages[-1].get("content")
        batch = self.processor(text=row["prompt"], mode="understanding", return_tensors=None)
        return batch["input_ids"][0], row["response"]

    def _image_inputs(self, row, name, image_mode):
        if _present(row, f"{name}_tokens"):  # as (h, w, codes) dicts: a `datasets` row holds nested lists
            items = [_grid_codes(item) for item in _code_items(row[f"{name}_tokens"])]
            return {"image_tokens": [[{"h": h, "w": w, "token_ids": codes} for h, w, codes in items]]}
        images = row[name]
        return {"images": [list(images) if isinstance(images, (list, tuple)) else images], "image_mode": image_mode}

    def _interleaved(self, row, pixels, index):
        """Prompt (interleaved template, optional input pictures) + the response's segments as one target: text ids,
        and image blocks (header, codes or placeholders, `<|/image|>`), then EOS."""
        inputs = {}
        if _present(row, "image") or _present(row, "image_tokens"):
            inputs = self._image_inputs(row, "image", self.understanding_image_mode)
        unconditional = _unconditional(row, "prompt")
        with _quiet(self.processor, unconditional):
            batch = self.processor(text=row["prompt"], mode="interleaved", return_uncond=unconditional,
                                   return_tensors=None, **inputs)
        self._collect(batch, pixels)
        prompt = batch["uncond_input_ids" if unconditional else "input_ids"][0]
        segments = row["segments"]
        if not isinstance(segments, (list, tuple)) or not segments:
            raise ValueError(f"row {index} (interleaved): `segments` must be a non-empty list of {{'text': ...}} / "
                             "{'image': ...} / {'image_tokens': ...} items.")
        target = []
        for number, segment in enumerate(segments):
            kinds = [k for k in ("text", "image", "image_tokens") if isinstance(segment, dict) and _present(segment, k)]
            if len(kinds) != 1:
                raise ValueError(f"row {index} (interleaved): segments[{number}] must be a dict with exactly one of "
                                 f"'text', 'image', 'image_tokens'; got {segment!r:.80}.")
            if kinds[0] == "text":
                target += self._text_ids(segment["text"], f"segments[{number}]", index)
                continue
            field = "target_image_tokens" if kinds[0] == "image_tokens" else "target_image"
            grid, codes = self._target({field: segment[kinds[0]]}, pixels)
            target += self.processor.image_header_ids(*grid) + codes + [self.processor.image_end_token_id]
        return self._with_text_target(prompt, None, pixels, index, ids=target)

    def _text_ids(self, text, name, index):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"row {index}: `{name}` is empty.")
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _target(self, row, pixels):
        """(grid, target ids): codes as vocabulary ids, or placeholders plus the image's pixel_values."""
        offset = self.processor.image_token_offset
        if _present(row, "target_image_tokens"):
            h, w, codes = _grid_codes(row["target_image_tokens"])
            return (h, w), [offset + code for code in codes]
        processed = self.processor.image_processor.preprocess(row["target_image"], mode=self.image_mode)
        _, h, w = (int(v) for v in processed["image_grid_thw"][0])
        pixels.append((processed["pixel_values"], processed["image_grid_thw"]))
        return (h, w), [self.processor.image_start_token_id] * (h * w)

    @staticmethod
    def _collect(batch, pixels):
        if batch.get("pixel_values") is not None:
            pixels.append((batch["pixel_values"], batch["image_grid_thw"]))

    def _with_text_target(self, prompt, text, pixels, index, ids=None):
        if ids is None:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"row {index}: the answer / response is empty.")
            ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        target = list(ids) + [self.eos_id]
        if self.pad_to_block:
            end = -(-(len(prompt) + len(target)) // self.block_length) * self.block_length
            target += [self.eos_id] * (end - len(prompt) - len(target))
        return self._finish(list(prompt), target, pixels, index)

    def _with_image_target(self, prompt, target, pixels, index):
        return self._finish(list(prompt), target, pixels, index)

    def _finish(self, prompt, target, pixels, index):
        ids = prompt + target
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"row {index}: {len(ids)} tokens exceed max_length={self.max_length}.")
        labels = [-100] * len(prompt) + list(target)
        return {"input_ids": ids, "labels": labels, "pixels": pixels}

    # ------------------------------------------------------------------ batches

    def __call__(self, rows) -> dict:
        encoded = [self.encode(row, i) for i, row in enumerate(rows)]
        if not encoded:
            raise ValueError("an empty batch.")
        length = max(len(e["input_ids"]) for e in encoded)
        input_ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixels = [p for e in encoded for p in e["pixels"]]
        if pixels:
            batch["pixel_values"] = torch.cat([p for p, _ in pixels])
            batch["image_grid_thw"] = torch.cat([g for _, g in pixels])
        return batch


def _present(row, name) -> bool:
    value = row.get(name)
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return True


def _unconditional(row, text_field) -> bool:
    """Whether a row is the unconditional (classifier-free guidance) branch: its text is exactly `<uncondition>`
    (read as the control token here, whereas in user text it stays plain words) or `unconditional` is set."""
    return bool(row.get("unconditional")) or (isinstance(row.get(text_field), str)
                                                and row[text_field].strip() == UNCONDITION)


@contextlib.contextmanager
def _quiet(processor, unconditional: bool):
    """For an unconditional row the processor also builds the conditional prompt around the literal text
    `<uncondition>` (unused here) and would warn that it reads it as unknown words; silence that one call."""
    logger = logging.getLogger(type(processor).__module__)
    level = logger.level
    if unconditional:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _is_one_code_item(value) -> bool:
    """A dict, an (h, w, codes) triple or a 2-D grid (nested lists of ints, or a 2-D tensor / array)."""
    if isinstance(value, dict):
        return True
    if isinstance(value, (tuple, list)):
        if len(value) == 3 and all(isinstance(v, numbers.Integral) for v in value[:2]):
            return not isinstance(value[2], numbers.Integral)  # else a row of a 3-wide grid
        return bool(value) and all(isinstance(r, (tuple, list)) and r
                                   and all(isinstance(v, numbers.Integral) for v in r) for r in value)
    return hasattr(value, "shape") and len(value.shape) == 2


def _code_items(value) -> list:
    """One image's codes, or a list of several, as a list of items (see `_grid_codes`)."""
    if _is_one_code_item(value):
        return [value]
    if isinstance(value, (tuple, list)) and value and all(_is_one_code_item(item) for item in value):
        return list(value)
    if hasattr(value, "shape") and len(value.shape) == 3:
        return list(value)
    return [value]  # `_grid_codes` names what is wrong with it


def _grid_codes(value):
    """Offset-free codes as (h, w, [codes]) from a [h, w] grid, an (h, w, codes) triple or generate_image's dict."""
    if isinstance(value, dict):
        h, w = value.get("h", value.get("height")), value.get("w", value.get("width"))
        codes = value["token_ids"]
    elif isinstance(value, (tuple, list)) and len(value) == 3 and isinstance(value[0], int):
        h, w, codes = value
    else:
        grid = torch.as_tensor(value)
        if grid.dim() != 2:
            raise ValueError(f"image tokens must be a [h, w] grid, an (h, w, codes) triple or a dict; got shape "
                             f"{list(grid.shape)}.")
        h, w, codes = grid.shape[0], grid.shape[1], grid.reshape(-1)
    codes = [int(c) for c in torch.as_tensor(codes).reshape(-1).tolist()]
    if len(codes) != int(h) * int(w):
        raise ValueError(f"image tokens: {len(codes)} codes for a {h}x{w} grid.")
    return int(h), int(w), codes


__all__ = ["LLaDA2UniDataCollator"]
