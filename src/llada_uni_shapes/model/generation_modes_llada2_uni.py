"""Image-token generation for LLaDA2.0-Uni on top of the block-diffusion loop of `generation_llada2_uni.py`.

Text-to-image: the prompt ends with the output header `<|image|><|reserved_h|><|reserved_w|><boi>` and the model fills
exactly h*w positions. Classifier-free guidance runs the conditional rows and their unconditional twins in one batch
(`guided = uncond + cfg_scale * (cond - uncond)` on the logits); an unconditional prompt is right-aligned to end
where its conditional prompt ends, its key padding is masked out, its positions start at its first real token, and
its generated region mirrors the conditional row at every step. Sampling is restricted to the image vocabulary by
default; with the restriction off the loop is the one of the LLaDA-Image port (text ids can win, and a committed
`<|/image|>` with nothing masked before it ends the image early).
"""

from typing import Optional

import torch
from transformers.utils import logging

from .generation_interleaved_llada2_uni import LLaDA2UniInterleavedMixin
from .generation_llada2_uni import LLaDA2GenerationConfig, build_canvas, split_prompts
from .sprint_llada2_uni import SprintConfig, sprint_from_original

logger = logging.get_logger(__name__)


class LLaDA2UniGenerationMixin(LLaDA2UniInterleavedMixin):
    """Image-token generation for `LLaDA2UniForConditionalGeneration`."""

    @torch.no_grad()
    def generate_image_tokens(
        self,
        input_ids: torch.LongTensor,
        *,
        height: int,
        width: int,
        attention_mask: Optional[torch.Tensor] = None,
        uncond_input_ids: Optional[torch.LongTensor] = None,
        uncond_attention_mask: Optional[torch.Tensor] = None,
        cfg_scale: float = 1.0,
        uncond_image_input_ids: Optional[torch.LongTensor] = None,
        uncond_image_attention_mask: Optional[torch.Tensor] = None,
        cfg_image_scale: float = 0.0,
        steps: int = 8,
        block_length: Optional[int] = None,
        threshold: float = 0.95,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        restrict_to_image_vocab: bool = True,
        use_block_cache: bool = True,
        sprint=None,
        generator: Optional[torch.Generator] = None,
        output_history: bool = False,
        return_dict: bool = True,
    ):
        r"""
        Generate an `height` x `width` grid of image tokens after prompts that end with the image header.

        Args:
            input_ids (`torch.LongTensor` [B, P] or [P]): conditional prompts; `attention_mask` (and the matching
                `uncond_attention_mask` / `uncond_image_attention_mask`) mark left padding, as the processor returns.
            height / width (`int`): token grid (h, w); exactly h*w tokens are generated.
            uncond_input_ids (`torch.LongTensor` [B, P'] or [P'], *optional*): unconditional prompts for CFG, P' <= P.
            cfg_scale (`float`, defaults to 1.0): guidance scale; 1 disables CFG (the unconditional rows are skipped).
            uncond_image_input_ids (`torch.LongTensor`, *optional*), cfg_image_scale (`float`, defaults to 0.0): the
                image-dropped prompts of three-way editing CFG, `guided = U + cfg_scale * (C - U) + cfg_image_scale *
                (U - N)` with C = conditional, U = text-dropped, N = image-dropped logits (N runs only when
                `cfg_image_scale` != 0).
            steps (`int`, defaults to 8): denoising forwards per block (capped at h*w).
            restrict_to_image_vocab (`bool`, defaults to True): sample only image codes. False reproduces the
                LLaDA-Image port, where text ids can be chosen (they come back as negative codes).
            sprint (`bool`, `dict` or `SprintConfig`, *optional*): SPRINT (approximate; see `generate()`). It runs
                without CFG and with simple CFG; under three-way editing CFG (`cfg_image_scale` != 0) it is turned
                off and the exact loop runs, as in the original.
            output_history (`bool`, defaults to False): also return `history`, the grid after every forward.
            Other arguments as in `generate()`.

        Returns:
            dict with `token_ids` (`torch.LongTensor` [B, h*w], offset-free codes; with the restriction off a row that
            closed its image early is padded with -1), `height`, `width`, `num_forward_passes`, and with
            `output_history` a `history` tuple of [B, h*w] ids after each forward (still-masked cells hold the mask
            id, committed ones their code + `image_token_offset`).
        """
        config = self.config
        offset, codebook = config.image_token_offset, config.codebook_size
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number of tokens, got {value!r}.")
        for name, value in (("cfg_scale", cfg_scale), ("cfg_image_scale", cfg_image_scale)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
        cond = _rows(input_ids, "input_ids", mask=attention_mask)
        uncond = None
        if uncond_input_ids is not None:
            uncond = _rows(uncond_input_ids, "uncond_input_ids", len(cond), uncond_attention_mask)
        no_image = None
        if cfg_image_scale != 0.0:
            if uncond is None or uncond_image_input_ids is None:
                raise ValueError("`cfg_image_scale` needs both `uncond_input_ids` and `uncond_image_input_ids`.")
            no_image = _rows(uncond_image_input_ids, "uncond_image_input_ids", len(cond), uncond_image_attention_mask)
        use_cfg = uncond is not None and (cfg_scale != 1.0 or no_image is not None)
        if SprintConfig.from_setting(sprint) is not None and no_image is not None:
            logger.info("SPRINT does not support three-way editing CFG (cfg_image_scale != 0): using the exact loop.")
            sprint = None
        count = height * width
        generation_config = LLaDA2GenerationConfig(
            gen_length=count, steps=min(steps, count), block_length=block_length, threshold=threshold,
            temperature=temperature, top_k=top_k, top_p=top_p, use_block_cache=use_block_cache, sprint=sprint,
            output_history=output_history,
        ).resolve(config.get_text_config())
        # The image stops only at `<|/image|>`, which the image vocabulary cannot produce.
        generation_config.eos_token_id = None if restrict_to_image_vocab else config.image_end_token_id
        limit = config.get_text_config().max_position_embeddings
        if max(len(p) for p in cond) + count > limit:
            raise ValueError(f"a {height}x{width} grid after the prompt exceeds max_position_embeddings={limit}.")

        guidance = [(i, prompt) for i, prompt in enumerate(uncond)] if use_cfg else []
        guidance += [(i, prompt) for i, prompt in enumerate(no_image)] if no_image is not None else []
        canvas = build_canvas(cond, generation_config, self.device, guidance_prompts=guidance)
        batch = len(cond)

        def combine(logits):
            cond_logits, uncond_logits = logits[:batch], logits[batch : 2 * batch]
            guided = uncond_logits + cfg_scale * (cond_logits - uncond_logits)
            if no_image is not None:
                guided = guided + cfg_image_scale * (uncond_logits - logits[2 * batch :])
            return guided

        generated, passes, history = self._run_blocks(
            canvas,
            generation_config,
            combine=combine if use_cfg else None,
            vocab_range=(offset, offset + codebook) if restrict_to_image_vocab else None,
            stop_rule="settled",
            generator=generator,
            image_range=self._image_id_range(),
        )
        codes = generated - offset
        if not restrict_to_image_vocab and config.image_end_token_id is not None:
            closed = (generated == config.image_end_token_id).cumsum(dim=1) > 0
            codes = codes.masked_fill(closed, -1)
        result = {"token_ids": codes, "height": height, "width": width, "num_forward_passes": passes}
        if output_history:
            result["history"] = history
        return result if return_dict else codes


    # ------------------------------------------------------------------ the original task methods

    def _task_processor(self, processor):
        processor = processor if processor is not None else getattr(self, "processor", None)
        if processor is None:
            raise ValueError(
                "`processor` is required: pass an LLaDA2UniProcessor (AutoProcessor.from_pretrained(path, "
                "trust_remote_code=True)) or set `model.processor`."
            )
        return processor

    def _codes_from_original(self, image_tokens, h, w, name):
        """The original methods take ids *with* the image offset; accept offset-free codes as well."""
        codes = torch.as_tensor(image_tokens, dtype=torch.long).reshape(-1)
        if h is None or w is None:
            raise ValueError(f"`{name}` needs the grid `h` and `w`.")
        if codes.numel() != h * w:
            raise ValueError(f"`{name}` holds {codes.numel()} tokens for a {h}x{w} grid ({h * w} expected).")
        offset = self.config.image_token_offset
        if codes.numel() and codes.min() >= offset:
            codes = codes - offset
        return (h, w, codes)

    def _image_inputs(self, image, image_tokens, h, w, name):
        if (image is None) == (image_tokens is None):
            raise ValueError(f"give exactly one of `image` (pixels) and `{name}` (token ids).")
        if image is not None:
            return {"images": image}
        return {"image_tokens": [self._codes_from_original(image_tokens, h, w, name)]}

    def _fill_images(self, batch, *keys):
        """Put the images' codes into every row set in `keys` (the cond and text-dropped rows share the image)."""
        if "pixel_values" not in batch:
            return [batch[key] for key in keys]
        codes = self.get_image_tokens(batch["pixel_values"].to(self.device), batch["image_grid_thw"].to(self.device))
        filled = []
        for key in keys:
            ids = batch[key].to(self.device)
            has_placeholders = self.image_placeholder_mask(ids).any()
            filled.append(self.insert_image_tokens(ids, image_tokens=codes) if has_placeholders else ids)
        return filled

    def generate_image(self, prompt, image_h=1024, image_w=1024, *, processor=None, steps=8, cfg_scale=2.0,
                       block_length=32, mode="normal", thinking_steps=32, thinking_gen_length=4096, threshold=0.95,
                       temperature=0.0, restrict_to_image_vocab=True, use_block_cache=True, use_sprint=False,
                       sprint=None, generator=None, **sprint_options):
        """Text-to-image as in the original API: `{"token_ids": [h*w codes], "h", "w"}` (+ `"thinking"` text in
        `mode="thinking"`). `image_h` / `image_w` are pixels (32 px per token: 1024 -> a 32 x 32 grid).
        SPRINT: `use_sprint=True` with the original's keywords (`keep_ratio`, `cache_warmup_steps`,
        `confidence_alpha`, `image_keep_ratio`, `text_keep_ratio`, `remasking`), or `sprint=` (see `generate()`); it
        applies to the image phase."""
        processor = self._task_processor(processor)
        sprint = sprint_from_original(use_sprint, sprint, **sprint_options)
        if mode not in ("normal", "thinking"):
            raise ValueError(f"`mode` must be 'normal' or 'thinking', got {mode!r}.")
        if not isinstance(prompt, str):
            raise ValueError("`prompt` must be a string (use generate_image_tokens for batches).")
        h, w = processor.generation_grid(image_h, image_w)
        batch = processor(text=prompt, mode="t2i", height=image_h, width=image_w, thinking=mode == "thinking")
        input_ids, thinking = batch["input_ids"].to(self.device), None
        if mode == "thinking":
            # Phase 1: free text (no CFG, no vocabulary restriction) until the model opens the image with <boi>.
            out = self.generate(input_ids, gen_length=thinking_gen_length, steps=thinking_steps,
                                block_length=block_length, threshold=threshold, temperature=temperature,
                                eos_token_id=self.config.boi_token_id, generator=generator)
            prompt_length = input_ids.shape[1]
            input_ids = processor.t2i_thinking_prefix(input_ids, out[0, prompt_length:], grid=(h, w)).unsqueeze(0)
            header_length = len(processor.image_header_ids(h, w))
            thinking = processor.decode(input_ids[0, prompt_length:-header_length], skip_special_tokens=True)
        result = self.generate_image_tokens(
            input_ids, uncond_input_ids=batch["uncond_input_ids"], uncond_attention_mask=batch["uncond_attention_mask"],
            height=h, width=w, cfg_scale=cfg_scale, steps=steps, block_length=block_length, threshold=threshold,
            temperature=temperature, restrict_to_image_vocab=restrict_to_image_vocab,
            use_block_cache=use_block_cache, sprint=sprint, generator=generator,
        )
        output = {"token_ids": result["token_ids"][0].tolist(), "h": h, "w": w}
        if thinking is not None:
            output["thinking"] = thinking
        return output

    def understand_image(self, image_tokens=None, h=None, w=None, question="", *, image=None, processor=None,
                         steps=32, gen_length=2048, block_length=32, threshold=0.95, temperature=0.0,
                         use_block_cache=True, use_sprint=False, sprint=None, generator=None, **sprint_options):
        """Answer `question` about one image (pixels via `image=`, or the original's token ids + grid). Returns the
        answer text (special tokens removed). SPRINT settings as in `generate_image`."""
        processor = self._task_processor(processor)
        sprint = sprint_from_original(use_sprint, sprint, **sprint_options)
        batch = processor(text=question, mode="understanding",
                          **self._image_inputs(image, image_tokens, h, w, "image_tokens"))
        (input_ids,) = self._fill_images(batch, "input_ids")
        out = self.generate(input_ids, gen_length=gen_length, steps=steps, block_length=block_length,
                            threshold=threshold, temperature=temperature, use_block_cache=use_block_cache,
                            sprint=sprint, generator=generator)
        return processor.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)

    def edit_image(self, image_tokens=None, h=None, w=None, instruction="", *, image=None, processor=None, steps=8,
                   block_length=32, cfg_text_scale=4.0, cfg_image_scale=0.0, threshold=0.95, temperature=0.0,
                   restrict_to_image_vocab=True, use_block_cache=True, use_sprint=False, sprint=None, generator=None,
                   **sprint_options):
        """Edit one image (or several references: a list for `image`) following `instruction`, with three-way CFG.
        Returns `{"token_ids": [h*w codes], "h", "w"}` on the source image's grid (the first one for several).
        SPRINT settings as in `generate_image`; with `cfg_image_scale` != 0 the exact loop runs instead."""
        processor = self._task_processor(processor)
        sprint = sprint_from_original(use_sprint, sprint, **sprint_options)
        if not isinstance(instruction, str) or not instruction:
            raise ValueError("`instruction` must be a non-empty string.")
        batch = processor(text=instruction, mode="edit", image_cfg=cfg_image_scale != 0.0,
                          **self._image_inputs(image, image_tokens, h, w, "image_tokens"))
        keys = ["input_ids", "uncond_input_ids"] + (["uncond_image_input_ids"] if cfg_image_scale != 0.0 else [])
        rows = self._fill_images(batch, *keys)
        # The prompt ends with the output header; its size tokens give the grid the processor chose.
        header = [seg for seg in processor.split_generation(rows[0][0].tolist()) if seg["type"] == "image"][-1]
        out_h, out_w = header["height"], header["width"]
        result = self.generate_image_tokens(
            rows[0], uncond_input_ids=rows[1], uncond_attention_mask=batch["uncond_attention_mask"],
            uncond_image_input_ids=rows[2] if len(rows) > 2 else None,
            uncond_image_attention_mask=batch.get("uncond_image_attention_mask"),
            height=out_h, width=out_w, cfg_scale=cfg_text_scale, cfg_image_scale=cfg_image_scale, steps=steps,
            block_length=block_length, threshold=threshold, temperature=temperature,
            restrict_to_image_vocab=restrict_to_image_vocab, use_block_cache=use_block_cache, sprint=sprint,
            generator=generator,
        )
        return {"token_ids": result["token_ids"][0].tolist(), "h": out_h, "w": out_w}


def _rows(ids, name, expected_rows=None, mask=None):
    """Prompt rows without their left padding."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64) or ids.dim() not in (1, 2):
        raise ValueError(f"`{name}` must be a LongTensor [batch, length] or [length].")
    ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
    if ids.shape[-1] == 0:
        raise ValueError(f"`{name}` is empty.")
    if expected_rows is not None and ids.shape[0] != expected_rows:
        raise ValueError(f"`{name}` has {ids.shape[0]} rows for {expected_rows} prompts.")
    if mask is not None:
        mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
    return [row.long() for row in split_prompts(ids, mask, name=name.replace("input_ids", "attention_mask"))]


__all__ = ["LLaDA2UniGenerationMixin"]
