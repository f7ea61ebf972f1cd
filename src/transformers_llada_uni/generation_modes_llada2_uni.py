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

from .generation_llada2_uni import LLaDA2GenerationConfig, build_canvas


class LLaDA2UniGenerationMixin:
    """Image-token generation for `LLaDA2UniForConditionalGeneration`."""

    @torch.no_grad()
    def generate_image_tokens(
        self,
        input_ids: torch.LongTensor,
        *,
        height: int,
        width: int,
        uncond_input_ids: Optional[torch.LongTensor] = None,
        cfg_scale: float = 1.0,
        uncond_image_input_ids: Optional[torch.LongTensor] = None,
        cfg_image_scale: float = 0.0,
        steps: int = 8,
        block_length: Optional[int] = None,
        threshold: float = 0.95,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        restrict_to_image_vocab: bool = True,
        use_block_cache: bool = True,
        generator: Optional[torch.Generator] = None,
        return_dict: bool = True,
    ):
        r"""
        Generate an `height` x `width` grid of image tokens after prompts that end with the image header.

        Args:
            input_ids (`torch.LongTensor` [B, P] or [P]): conditional prompts (one row each, no padding).
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
            Other arguments as in `generate()`.

        Returns:
            dict with `token_ids` (`torch.LongTensor` [B, h*w], offset-free codes; with the restriction off a row that
            closed its image early is padded with -1), `height`, `width`, `num_forward_passes`.
        """
        config = self.config
        offset, codebook = config.image_token_offset, config.codebook_size
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number of tokens, got {value!r}.")
        for name, value in (("cfg_scale", cfg_scale), ("cfg_image_scale", cfg_image_scale)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
        cond = _rows(input_ids, "input_ids")
        uncond = _rows(uncond_input_ids, "uncond_input_ids", len(cond)) if uncond_input_ids is not None else None
        no_image = None
        if cfg_image_scale != 0.0:
            if uncond is None or uncond_image_input_ids is None:
                raise ValueError("`cfg_image_scale` needs both `uncond_input_ids` and `uncond_image_input_ids`.")
            no_image = _rows(uncond_image_input_ids, "uncond_image_input_ids", len(cond))
        use_cfg = uncond is not None and (cfg_scale != 1.0 or no_image is not None)
        count = height * width
        generation_config = LLaDA2GenerationConfig(
            gen_length=count, steps=min(steps, count), block_length=block_length, threshold=threshold,
            temperature=temperature, top_k=top_k, top_p=top_p, use_block_cache=use_block_cache,
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

        generated, passes, _ = self._run_blocks(
            canvas,
            generation_config,
            combine=combine if use_cfg else None,
            vocab_range=(offset, offset + codebook) if restrict_to_image_vocab else None,
            stop_rule="settled",
            generator=generator,
        )
        codes = generated - offset
        if not restrict_to_image_vocab and config.image_end_token_id is not None:
            closed = (generated == config.image_end_token_id).cumsum(dim=1) > 0
            codes = codes.masked_fill(closed, -1)
        result = {"token_ids": codes, "height": height, "width": width, "num_forward_passes": passes}
        return result if return_dict else codes


def _rows(ids, name, expected_rows=None):
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64) or ids.dim() not in (1, 2):
        raise ValueError(f"`{name}` must be a LongTensor [batch, length] or [length].")
    ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
    if ids.shape[-1] == 0:
        raise ValueError(f"`{name}` is empty.")
    if expected_rows is not None and ids.shape[0] != expected_rows:
        raise ValueError(f"`{name}` has {ids.shape[0]} rows for {expected_rows} prompts.")
    return list(ids.long())


__all__ = ["LLaDA2UniGenerationMixin"]
