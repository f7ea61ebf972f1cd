"""The original release's convenience API, as thin wrappers above the one `generate()` entry.

`understand_image`, `generate_image`, `edit_image` and `generate_interleaved` take a `processor=` (or
`model.processor`), build the prompt with it and call `generate()`; `generate_image_tokens` is the token-level
variant for prompts already built. None of them holds a sampling default: every setting comes from the model's
`generation_config` unless given as `generation_config=` or a keyword (the original keyword names work:
`steps`, `cfg_scale`, `cfg_text_scale`, `cfg_image_scale`, `gen_length`, `thinking_steps`, `thinking_gen_length`,
`use_sprint` with SPRINT's keywords).
"""

import torch

from .sprint_llada2_uni import SPRINT_ALIASES, SprintConfig, sprint_from_original

_SPRINT_KEYS = {f.name for f in SprintConfig.__dataclass_fields__.values()} | set(SPRINT_ALIASES)


def _original_settings(overrides: dict, image: bool) -> dict:
    """Map the original methods' keywords onto `LLaDA2GenerationConfig` fields: `steps` of an image method is the
    image budget; `use_sprint=True` + SPRINT keywords become `sprint`."""
    settings = dict(overrides)
    if image and "steps" in settings:
        settings["image_steps"] = settings.pop("steps")
    use_sprint = settings.pop("use_sprint", False)
    options = {key: settings.pop(key) for key in list(settings) if key in _SPRINT_KEYS and key != "threshold"}
    if use_sprint or options:
        settings["sprint"] = sprint_from_original(use_sprint, settings.pop("sprint", None), **options)
    return settings


class LLaDA2UniTasksMixin:
    """`understand_image`, `generate_image`, `edit_image`, `generate_interleaved`, `generate_image_tokens`."""

    def _task_processor(self, processor):
        processor = processor if processor is not None else getattr(self, "processor", None)
        if processor is None:
            raise ValueError(
                "`processor` is required: pass an LLaDA2UniProcessor (AutoProcessor.from_pretrained(path, "
                "trust_remote_code=True)) or set `model.processor`."
            )
        return processor

    def _peek_settings(self, generation_config, settings: dict):
        """The settings a call will run with (read before the prompt is built, e.g. the image size)."""
        config, _ = self._generation_settings(generation_config, dict(settings))
        return config

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

    def _to_device(self, batch):
        device = self.generation_device
        return {key: value.to(device) for key, value in batch.items()}

    def generate_image_tokens(self, input_ids, *, height=None, width=None, generation_config=None, **kwargs):
        """Image tokens after prompts that end with the output header (e.g. `processor(mode="t2i")`): a dict with
        `token_ids` (offset-free codes [B, h*w]), `height`, `width`, `num_forward_passes` and, with
        `output_history=True`, `history`. `height` / `width` (tokens) name the grid when the header cannot be read.
        `steps` is the image budget; `cfg_scale` sets the guidance scale of text-to-image and of editing."""
        settings = _original_settings(kwargs, image=True)
        if "guidance_scale" in settings or "cfg_scale" in settings:
            scale = settings.pop("guidance_scale", None)
            scale = settings.pop("cfg_scale", scale)
            settings.update(guidance_scale=scale, edit_guidance_scale=scale)
        grid = (height, width) if height is not None or width is not None else None
        for name, value in (("height", height), ("width", width)):
            if grid is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"`{name}` must be a positive number of tokens, got {value!r}.")
        out = self.generate(input_ids, generation_config, generation_mode="image", return_dict_in_generate=True,
                            image_grid=grid, **settings)
        result = {"token_ids": out.image_tokens, "height": out.image_grid[0], "width": out.image_grid[1],
                  "num_forward_passes": out.num_forward_passes}
        if out.history is not None:
            result["history"] = out.history
        return result

    def generate_image(self, prompt, image_h=None, image_w=None, *, processor=None, mode="normal",
                       generation_config=None, **kwargs):
        """Text-to-image as in the original API: `{"token_ids": [h*w codes], "h", "w"}` (+ `"thinking"` text in
        `mode="thinking"`). `image_h` / `image_w` are pixels (default: the generation config's `image_height` /
        `image_width`; `pixels_per_token` px per token)."""
        processor = self._task_processor(processor)
        if mode not in ("normal", "thinking"):
            raise ValueError(f"`mode` must be 'normal' or 'thinking', got {mode!r}.")
        if not isinstance(prompt, str):
            raise ValueError("`prompt` must be a string (use the pipeline or generate() for batches).")
        settings = _original_settings(kwargs, image=True)
        if image_h is not None:
            settings["image_height"] = image_h
        if image_w is not None:
            settings["image_width"] = image_w
        config = self._peek_settings(generation_config, settings)
        grid = processor.image_processor.generation_grid(config.image_height, config.image_width,
                                                         config.pixels_per_token)
        batch = processor(text=prompt, mode="t2i", grid=grid, thinking=mode == "thinking",
                          return_uncond=config.guidance_scale != 1.0)
        out = self.generate(**self._to_device(batch), generation_config=generation_config,
                            generation_mode="thinking" if mode == "thinking" else "image",
                            return_dict_in_generate=True, image_grid=grid, **settings)
        result = {"token_ids": out.image_tokens[0].tolist(), "h": grid[0], "w": grid[1]}
        if out.thinking_ids is not None:
            result["thinking"] = processor.decode(out.thinking_ids[0], skip_special_tokens=True)
        return result

    def understand_image(self, image_tokens=None, h=None, w=None, question="", *, image=None, processor=None,
                         generation_config=None, **kwargs):
        """Answer `question` about one image (pixels via `image=`, or the original's token ids + grid). Returns the
        answer text (special tokens removed)."""
        processor = self._task_processor(processor)
        settings = _original_settings(kwargs, image=False)
        batch = processor(text=question, mode="understanding",
                          **self._image_inputs(image, image_tokens, h, w, "image_tokens"))
        out = self.generate(**self._to_device(batch), generation_config=generation_config, generation_mode="text",
                            **settings)
        sequences = out.sequences if hasattr(out, "sequences") else out
        return processor.decode(sequences[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    def edit_image(self, image_tokens=None, h=None, w=None, instruction="", *, image=None, processor=None,
                   generation_config=None, **kwargs):
        """Edit one image (or several references: a list for `image`) following `instruction`, with three-way CFG
        (`cfg_text_scale` / `cfg_image_scale`, or `edit_guidance_scale` / `image_guidance_scale`). Returns
        `{"token_ids": [h*w codes], "h", "w"}` on the source image's grid (the first one for several)."""
        processor = self._task_processor(processor)
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("`instruction` must be a non-empty string.")
        settings = _original_settings(kwargs, image=True)
        config = self._peek_settings(generation_config, settings)
        image_cfg = config.image_guidance_scale != 0.0
        batch = processor(text=instruction, mode="edit", image_cfg=image_cfg,
                          **self._image_inputs(image, image_tokens, h, w, "image_tokens"))
        out = self.generate(**self._to_device(batch), generation_config=generation_config, generation_mode="image",
                            return_dict_in_generate=True, **settings)
        out_h, out_w = out.image_grid
        return {"token_ids": out.image_tokens[0].tolist(), "h": out_h, "w": out_w}

    def generate_interleaved(self, prompt=None, *, input_ids=None, uncond_input_ids=None, images=None,
                             processor=None, generation_config=None, **kwargs):
        """One response mixing text and images (batch 1): `{"sequences", "segments", "num_forward_passes"}`, the
        segments being `processor.split_generation` of the generated ids (None without a processor). `cfg_scale`
        (or `guidance_scale`) guides the image codes when it is not 1."""
        processor = processor if processor is not None else getattr(self, "processor", None)
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of `prompt` (a string) and `input_ids`.")
        settings = _original_settings(kwargs, image=False)
        config = self._peek_settings(generation_config, settings)
        guided = config.guidance_scale != 1.0
        if prompt is not None:
            if processor is None:
                raise ValueError("`processor` is required with `prompt` (or pass `input_ids`).")
            if not isinstance(prompt, str):
                raise ValueError(f"`prompt` must be a string, got {type(prompt).__name__}.")
            batch = self._to_device(processor(text=prompt, images=images, mode="interleaved", return_uncond=guided))
        else:
            if images is not None:
                raise ValueError("`images` go with `prompt`; `input_ids` must already hold the image blocks.")
            if guided and uncond_input_ids is None:
                if "guidance_scale" in settings or "cfg_scale" in settings:
                    raise ValueError("`guidance_scale` (`cfg_scale`) != 1 needs the unconditional prompt "
                                     "(`uncond_input_ids` or `prompt=`).")
                guided = False  # the model's default guidance needs rows that were not given: run unguided
            batch = {"input_ids": input_ids}
            if uncond_input_ids is not None:
                batch["uncond_input_ids"] = uncond_input_ids
        if not guided:
            batch.pop("uncond_input_ids", None)
            batch.pop("uncond_attention_mask", None)
        out = self.generate(**batch, generation_config=generation_config, generation_mode="interleaved",
                            return_dict_in_generate=True, **settings)
        generated = out.sequences[:, batch["input_ids"].reshape(1, -1).shape[1]:]
        segments = processor.split_generation(generated[0]) if processor is not None else None
        return {"sequences": out.sequences, "segments": segments, "num_forward_passes": out.num_forward_passes}


__all__ = ["LLaDA2UniTasksMixin"]
