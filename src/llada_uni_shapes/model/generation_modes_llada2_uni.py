"""The one generation entry of LLaDA2.0-Uni: processor outputs in, the mode chosen from the inputs and the config.

    text         understanding / chat: the backbone's text generation after the images' codes are put in
    image        text-to-image and editing: the prompt ends with the output header
                 `<|image|><|reserved_h|><|reserved_w|><boi>`; exactly h*w codes are generated
    thinking     text-to-image with reasoning first: the prompt ends at the assistant turn and the unconditional
                 rows (CFG) are given; the reasoning runs until `<boi>`, then the header and the image follow
    interleaved  one response mixing text and images (batch 1; `generation_interleaved_llada2_uni.py`)

`generation_mode=` (or the config's `generation_mode`) names the mode; by default it is read from the inputs: every
prompt ends with an output header -> image; unconditional rows without one -> thinking; else text. Interleaved is
never guessed.

Classifier-free guidance runs the conditional rows and their unconditional twins in one batch. Text-to-image:
`guided = U + guidance_scale * (C - U)`; editing (the prompt holds an input image): `guided = U +
edit_guidance_scale * (C - U) + image_guidance_scale * (U - N)`, with N the image-dropped rows, which run only when
`image_guidance_scale` != 0. An unconditional prompt is right-aligned to end where its conditional prompt ends, and its
generated region mirrors the conditional row at every step. Sampling is restricted to the image vocabulary by
default; with the restriction off the loop is the one of the LLaDA-Image port (text ids can win, and a committed
`<|/image|>` with nothing masked before it ends the image early).
"""

import copy
from typing import Optional

import torch
from transformers.utils import logging

from .generation_config_llada2_uni import fit_length, named_like_the_original
from .generation_interleaved_llada2_uni import interleaved_grammar, make_constraint
from .generation_llada2_uni import (
    LLaDA2GenerateOutput,
    build_canvas,
    check_input_ids,
    finish_rows,
    guide_logits,
    repeat_rows,
    split_prompts,
)
from .prompting_llada2_uni import reasoning_ids
from .sprint_llada2_uni import SprintConfig

logger = logging.get_logger(__name__)


class LLaDA2UniGenerationMixin:
    """`generate()` for `LLaDA2UniForConditionalGeneration`: every task through one tensor-in entry."""

    @torch.no_grad()
    def generate(
        self,
        inputs: Optional[torch.LongTensor] = None,
        generation_config=None,
        logits_processor=None,
        stopping_criteria=None,
        attention_mask: Optional[torch.Tensor] = None,
        streamer=None,
        generator: Optional[torch.Generator] = None,
        *,
        pixel_values: Optional[torch.Tensor] = None,
        image_grid_thw: Optional[torch.LongTensor] = None,
        image_tokens: Optional[torch.LongTensor] = None,
        uncond_input_ids: Optional[torch.LongTensor] = None,
        uncond_attention_mask: Optional[torch.Tensor] = None,
        uncond_image_input_ids: Optional[torch.LongTensor] = None,
        uncond_image_attention_mask: Optional[torch.Tensor] = None,
        image_grid: Optional[tuple] = None,
        **kwargs,
    ):
        r"""
        Generate text, image tokens, an edit, a reasoned image or an interleaved response from processor outputs.

        Args:
            inputs / input_ids, attention_mask: the prompts (left-padded), as the processor returns them.
            pixel_values, image_grid_thw (or image_tokens): the prompts' images; their codes replace the
                placeholders of every row set.
            uncond_input_ids / uncond_attention_mask, uncond_image_input_ids / uncond_image_attention_mask: the
                unconditional rows of CFG (text dropped / image dropped), as the processor returns them.
            generation_config (`LLaDA2GenerationConfig`, *optional*), **kwargs: settings (see
                `LLaDA2GenerationConfig`); `generation_mode` picks the mode (default: from the inputs).
            logits_processor, stopping_criteria, streamer, generator: as in the backbone's `generate()` (streamer
                and stopping criteria: text modes only).
            image_grid ((`int`, `int`), *optional*): the output grid when the prompt's header cannot be read
                (a config without `reserved_token_start_id`).

        Returns:
            Text: as the backbone's `generate()`. Image modes: `LongTensor` [B, P + h*w] (prompt then the codes as
            vocabulary ids), or with `return_dict_in_generate=True` an `LLaDA2GenerateOutput` that also holds
            `image_tokens` (offset-free codes [B, h*w]), `image_grid` and, for thinking, `thinking_ids`.
        """
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        rows = {"cond": (inputs, attention_mask), "uncond": (uncond_input_ids, uncond_attention_mask),
                "no_image": (uncond_image_input_ids, uncond_image_attention_mask)}
        with named_like_the_original():
            return self._generate_any(rows, generation_config, logits_processor, stopping_criteria, streamer,
                                      generator, pixel_values, image_grid_thw, image_tokens, image_grid, kwargs)

    def _generate_any(self, rows, generation_config, logits_processor, stopping_criteria, streamer, generator,
                      pixel_values, image_grid_thw, image_tokens, image_grid, kwargs):
        vocab = self.config.get_text_config().vocab_size
        inputs, attention_mask = rows.pop("cond")
        inputs = check_input_ids(inputs, vocab)
        given, rows = rows, {"cond": (inputs, attention_mask)}
        for key, (ids, mask) in given.items():
            if ids is not None:
                ids = check_input_ids(ids, vocab, "uncond_image_input_ids" if key == "no_image" else "uncond_input_ids")
                if ids.shape[0] != inputs.shape[0]:
                    name = "uncond_image_input_ids" if key == "no_image" else "uncond_input_ids"
                    raise ValueError(f"`{name}` has {ids.shape[0]} rows for {inputs.shape[0]} prompts.")
                rows[key] = (ids, mask)
        if pixel_values is not None or image_tokens is not None:
            rows = self._fill_image_rows(rows, pixel_values, image_grid_thw, image_tokens)
        config, explicit = self._generation_settings(generation_config, kwargs)
        self._refuse_unknown(kwargs)
        mode = config.generation_mode or self._detect_mode(rows)
        if mode == "text":
            return self._generate_text(*rows["cond"], config, explicit, logits_processor=logits_processor,
                                       stopping_criteria=stopping_criteria, streamer=streamer, generator=generator)
        if streamer is not None:
            raise ValueError(f"`streamer` works in text mode only, not in {mode!r} mode.")
        count = config.num_return_sequences
        rows = {key: repeat_rows(count, *pair) for key, pair in rows.items()}
        if mode == "interleaved":
            return self._generate_interleaved(rows, config, explicit, logits_processor, generator)
        if mode == "thinking":
            return self._generate_thinking(rows, config, explicit, image_grid, logits_processor, stopping_criteria,
                                           generator)
        return self._generate_image(rows, config, image_grid, logits_processor, generator, explicit)

    # ------------------------------------------------------------------ inputs

    def _fill_image_rows(self, rows, pixel_values, image_grid_thw, image_tokens):
        """Put the images' codes into every row set that holds placeholders (cond and text-dropped rows share the
        images; image-dropped rows hold none)."""
        device = self.generation_device  # a walk over the modules: once per call
        if image_tokens is None:
            if pixel_values is None or image_grid_thw is None:
                raise ValueError("`pixel_values` needs `image_grid_thw` (both come from the processor).")
            image_tokens = self.get_image_tokens(pixel_values.to(device), image_grid_thw.to(device))
        filled = {}
        for key, (ids, mask) in rows.items():
            ids = ids.to(device)
            if self.image_placeholder_mask(ids).any():
                ids = self.insert_image_tokens(ids, image_tokens=image_tokens)
            filled[key] = (ids, mask)
        return filled

    def _size_ids(self) -> Optional[list]:
        start = getattr(self.config, "reserved_token_start_id", None)
        if start is None:
            return None
        return list(range(start, start + self.config.num_reserved_tokens))

    def header_ids(self, height: int, width: int) -> list:
        """`<|image|><|reserved_token_h|><|reserved_token_w|><boi>` for an h x w grid, from the config's ids."""
        sizes = self._size_ids()
        if sizes is None:
            raise ValueError("writing an image header needs `reserved_token_start_id` in the model config.")
        for name, value in (("height", height), ("width", width)):
            if not 1 <= value < len(sizes):
                raise ValueError(f"a grid {name} of {value} tokens cannot be written (size tokens 1.."
                                 f"{len(sizes) - 1}).")
        return [self.config.image_start_token_id, sizes[height], sizes[width], self.config.boi_token_id]

    def _header_grid(self, prompt) -> Optional[tuple]:
        """(h, w) when `prompt` ends with an output header, (None, None) when it does but the sizes cannot be read,
        else None."""
        config = self.config
        if len(prompt) < 4 or int(prompt[-1]) != config.boi_token_id or int(prompt[-4]) != config.image_start_token_id:
            return None
        sizes = self._size_ids()
        if sizes is None:
            return (None, None)
        value = {token: n for n, token in enumerate(sizes)}
        h, w = value.get(int(prompt[-3])), value.get(int(prompt[-2]))
        return (h, w) if h and w else (None, None)

    def _detect_mode(self, rows) -> str:
        prompts = split_prompts(*rows["cond"])
        headers = [self._header_grid(p) is not None for p in prompts]
        if all(headers):
            return "image"
        if any(headers):
            raise ValueError("some prompts end with an image header and some do not; generate them separately.")
        return "thinking" if "uncond" in rows else "text"

    def _output_grid(self, prompts, image_grid) -> tuple:
        grids = {self._header_grid(p) for p in prompts}
        if image_grid is not None:
            return tuple(image_grid)
        if len(grids) != 1 or None in grids:
            raise ValueError("in image mode every prompt must end with the same output header (one grid per call).")
        grid = grids.pop()
        if None in grid:
            raise ValueError("the output header's sizes cannot be read: pass `image_grid=(h, w)` or set "
                             "`reserved_token_start_id` in the model config.")
        return grid

    # ------------------------------------------------------------------ image tokens

    def _generate_image(self, rows, config, image_grid, logits_processor, generator, explicit=frozenset()):
        text_config = self.config.get_text_config()
        offset, codebook = self.config.image_token_offset, self.config.codebook_size
        image_start = self.config.image_start_token_id
        cond, cond_mask = rows["cond"]
        prompts = split_prompts(cond, cond_mask)
        h, w = self._output_grid(prompts, image_grid)
        uncond = split_prompts(*rows["uncond"], name="uncond_attention_mask") if "uncond" in rows else None
        no_image = split_prompts(*rows["no_image"], name="uncond_image_attention_mask") if "no_image" in rows else None
        editing = no_image is not None or any(int((p == image_start).sum()) > 1 for p in prompts)
        scale = config.edit_guidance_scale if editing else config.guidance_scale
        asked = "image_guidance_scale" in explicit and config.image_guidance_scale != 0.0
        image_scale = config.image_guidance_scale if editing or asked else 0.0
        if image_scale != 0.0 and (uncond is None or no_image is None):
            raise ValueError("`image_guidance_scale` != 0 needs the text- and image-dropped rows: build the prompt "
                             "with processor(..., image_cfg=True) (uncond_input_ids and uncond_image_input_ids).")
        if image_scale == 0.0:
            no_image = None
        use_cfg = uncond is not None and (scale != 1.0 or no_image is not None)
        count = h * w
        limit = text_config.max_position_embeddings
        if max(len(p) for p in prompts) + count > limit:
            raise ValueError(f"a {h}x{w} grid after the prompt exceeds max_position_embeddings={limit}.")
        phase = copy.deepcopy(config)
        phase.max_new_tokens, phase.steps = count, min(config.image_steps, count)
        # The image stops only at `<|/image|>`, which the image vocabulary cannot produce.
        phase.eos_token_id = None if config.restrict_to_image_vocab else self.config.image_end_token_id
        if SprintConfig.from_setting(phase.sprint) is not None and no_image is not None:
            logger.info("SPRINT does not support three-way editing CFG (image_guidance_scale != 0): exact loop used.")
            phase.sprint = None
        guidance = [(i, p) for i, p in enumerate(uncond)] if use_cfg else []
        guidance += [(i, p) for i, p in enumerate(no_image)] if no_image is not None else []
        canvas = build_canvas(prompts, phase, self.generation_device, guidance_prompts=guidance)
        batch = len(prompts)

        def combine(logits):
            extra = logits[2 * batch :] if no_image is not None else None
            return guide_logits(logits[:batch], logits[batch : 2 * batch], scale, extra, image_scale)

        generated, passes, history = self._run_blocks(
            canvas, phase, combine=combine if use_cfg else None,
            vocab_range=(offset, offset + codebook) if config.restrict_to_image_vocab else None,
            stop_rule="settled", generator=generator, image_range=self._image_id_range(),
            logits_processor=logits_processor)
        codes = generated - offset
        if not config.restrict_to_image_vocab and self.config.image_end_token_id is not None:
            closed = (generated == self.config.image_end_token_id).cumsum(dim=1) > 0
            codes = codes.masked_fill(closed, -1)
        sequences = torch.cat([cond.to(generated.device), generated], dim=1)
        if not config.return_dict_in_generate:
            return sequences
        return LLaDA2GenerateOutput(sequences=sequences, num_forward_passes=passes, history=history,
                                    image_tokens=codes, image_grid=(h, w))

    # ------------------------------------------------------------------ thinking

    def _thinking_grid(self, rows, config, image_grid) -> tuple:
        if image_grid is not None:
            return tuple(image_grid)
        if "uncond" in rows:
            grids = {self._header_grid(p) for p in split_prompts(*rows["uncond"], name="uncond_attention_mask")}
            if len(grids) == 1 and None not in grids and None not in next(iter(grids)):
                return grids.pop()
        ppt = config.pixels_per_token
        for name in ("image_height", "image_width"):
            if getattr(config, name) % ppt:
                raise ValueError(f"`{name}` ({getattr(config, name)}) must be a multiple of `pixels_per_token` "
                                 f"({ppt}).")
        return config.image_height // ppt, config.image_width // ppt

    def _generate_thinking(self, rows, config, explicit, image_grid, logits_processor, stopping_criteria,
                           generator):
        h, w = self._thinking_grid(rows, config, image_grid)
        header = self.header_ids(h, w)
        cond, cond_mask = rows["cond"]
        prompts = split_prompts(cond, cond_mask)
        limit = self.config.get_text_config().max_position_embeddings
        # Phase 1: free text (no CFG, no vocabulary restriction, no SPRINT) until the model opens the image.
        reasoning = copy.deepcopy(config)
        reasoning.max_new_tokens = fit_length(config, explicit, "thinking_max_new_tokens",
                                              max(len(p) for p in prompts), limit, reserve=len(header) + h * w)
        reasoning.eos_token_id, reasoning.sprint = self.config.boi_token_id, None
        reasoning.num_return_sequences, reasoning.return_dict_in_generate = 1, False
        reasoning.output_history, reasoning.generation_mode = False, "text"
        out = self._generate_text(cond, cond_mask, reasoning, set(), logits_processor=logits_processor,
                                  stopping_criteria=stopping_criteria, generator=generator)
        stop = {self.config.get_text_config().eos_token_id, self.config.get_text_config().mask_token_id,
                reasoning.pad_token_id} - {None}
        thoughts = [torch.tensor(reasoning_ids(out[row, cond.shape[1]:].tolist(), boi_id=self.config.boi_token_id,
                                               stop_ids=stop, image_start_id=self.config.image_start_token_id,
                                               size_ids=self._size_ids() or []), dtype=torch.long)
                    for row in range(len(prompts))]
        # Phase 2: the image after prompt + reasoning + the requested header, with the unconditional rows as given.
        phase_two = [torch.cat([p.cpu(), t, torch.tensor(header)]) for p, t in zip(prompts, thoughts)]
        longest = max(len(p) for p in phase_two)
        pad = config.pad_token_id
        ids = torch.stack([torch.cat([torch.full((longest - len(p),), pad), p]) for p in phase_two])
        mask = torch.stack([torch.cat([torch.zeros(longest - len(p)), torch.ones(len(p))]) for p in phase_two]).long()
        device = self.generation_device
        rows = {**rows, "cond": (ids.to(device), mask.to(device))}
        result = self._generate_image(rows, _with(config, return_dict_in_generate=True), (h, w), logits_processor,
                                      generator)
        if not config.return_dict_in_generate:
            return result.sequences
        result.thinking_ids = tuple(thoughts)
        return result

    # ------------------------------------------------------------------ interleaved

    def _generate_interleaved(self, rows, config, explicit, logits_processor, generator):
        cond, cond_mask = rows["cond"]
        prompts = split_prompts(cond, cond_mask)
        if len(prompts) != 1:
            raise ValueError("`input_ids` must hold one prompt: interleaved generation runs batch 1.")
        limit = self.config.get_text_config().max_position_embeddings
        config = _with(config, max_new_tokens=fit_length(config, explicit, "max_new_tokens", len(prompts[0]), limit))
        grammar = interleaved_grammar(self.config, self._size_ids(), config.max_grid, config.invalid_size,
                                      config.interleaved_text)
        scale = config.guidance_scale if "uncond" in rows else 1.0
        guidance = []
        if scale != 1.0:
            guidance = [(0, split_prompts(*rows["uncond"], name="uncond_attention_mask")[0])]
        canvas = build_canvas(prompts, config, self.generation_device, guidance_prompts=guidance)
        constrain = make_constraint(grammar, canvas.gen_start, config.max_new_tokens, 1, scale)
        generated, passes, history = self._run_blocks(canvas, config, constrain=constrain, generator=generator,
                                                      logits_processor=logits_processor)
        generated = finish_rows(generated, config.eos_token_id, config.pad_token_id, config.mask_token_id)
        sequences = torch.cat([prompts[0].reshape(1, -1).to(generated.device), generated], dim=1)
        if not config.return_dict_in_generate:
            return sequences
        return LLaDA2GenerateOutput(sequences=sequences, num_forward_passes=passes, history=history)


def _with(config, **fields):
    copied = copy.deepcopy(config)
    for key, value in fields.items():
        setattr(copied, key, value)
    return copied


__all__ = ["LLaDA2UniGenerationMixin"]
