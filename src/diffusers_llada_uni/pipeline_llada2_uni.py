"""One pipeline for the three LLaDA2.0-Uni tasks: prompt -> image, image + question -> text, image + instruction ->
image. The transformers model (`mllm`) produces image tokens or text; the decoder stages of
`pipeline_llada2_uni_decoder.py` turn image tokens into pixels. The pipeline owns no model math.
"""

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from .hub_layout import (
    DECODER_DEFAULTS,
    DECODERS,
    SUBFOLDERS,
    check_decoder,
    default_scheduler,
    write_model_index,
)
from .loading import ComponentSource, decoder_component_names
from .pipeline_llada2_uni_decoder import (
    OUTPUT_TYPES,
    check_sampler_arguments,
    decode_latents,
    denoise,
    embed_image_tokens,
    latent_shape,
    to_output_type,
)
from .semantic_embedder import check_grid

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from diffusers_llada_uni import LLaDA2UniPipeline

        >>> pipe = LLaDA2UniPipeline.from_pretrained("path/to/converted")
        >>> image = pipe("a red fox in snow").images[0]
        >>> answer = pipe(image=image, question="What animal is this?").text[0]
        >>> edited = pipe(image=image, instruction="make it night").images[0]
        ```
"""

_MODELS = ("mllm", "semantic_embedder", "transformer", "transformer_turbo", "vae")


@dataclass
class LLaDA2UniPipelineOutput(BaseOutput):
    """
    Args:
        images: generated / edited images (list of PIL images, or an array / tensor for "np" / "pt"; a list when their
            sizes differ); None for understanding and for `output_type="tokens"`.
        text: answers (understanding) or the reasoning of thinking-mode text-to-image, one per output; else None.
        image_tokens: per generated image `{"token_ids": LongTensor [h*w] (offset-free), "h", "w"}`; else None.
    """

    images: Optional[Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]]
    text: Optional[List[str]] = None
    image_tokens: Optional[List[dict]] = None


class LLaDA2UniPipeline(DiffusionPipeline):
    r"""
    LLaDA2.0-Uni: text-to-image (optionally with a thinking phase), image understanding and image editing.

    Components:
        processor ([`LLaDA2UniProcessor`]), mllm ([`LLaDA2UniForConditionalGeneration`]),
        semantic_embedder ([`LLaDA2UniSemanticEmbedder`]), vae ([`AutoencoderKL`]), and per decoder a
        [`ZImageTransformer2DModel`] + [`LLaDA2UniFlowMatchEulerScheduler`]: `transformer` / `scheduler` (normal),
        `transformer_turbo` / `scheduler_turbo` (turbo). The pixel components are optional (understanding needs none).
    """

    model_cpu_offload_seq = "mllm->semantic_embedder->transformer->transformer_turbo->vae"
    _optional_components = ["semantic_embedder", "transformer", "vae", "scheduler", "transformer_turbo",
                            "scheduler_turbo"]
    _callback_tensor_inputs = ["latents", "cap_feats"]

    def __init__(self, processor, mllm, semantic_embedder=None, transformer=None, vae=None, scheduler=None,
                 transformer_turbo=None, scheduler_turbo=None):
        super().__init__()
        self.register_modules(processor=processor, mllm=mllm, semantic_embedder=semantic_embedder,
                              transformer=transformer, vae=vae, scheduler=scheduler,
                              transformer_turbo=transformer_turbo, scheduler_turbo=scheduler_turbo)
        self._source: Optional[ComponentSource] = None
        self._staged: set = set()
        self._stage_device = None

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, decoder: Optional[str] = "all", dtype=None,
                        stage_loading: bool = False, stage_device=None, **model_kwargs):
        r"""
        Load everything from one converted folder (the transformers model at the root, the pixel parts in
        subfolders; see docs/pipelines.md).

        Args:
            decoder (`str` or None, defaults to "all"): which decoders to load: "all" (every one the folder has),
                "normal", "turbo", or None (no pixel side: understanding only).
            dtype (`torch.dtype`, *optional*): dtype of every model (default: as stored).
            stage_loading (`bool`, defaults to False): load nothing now; each call loads a model from disk only for
                the stage that needs it and frees it right after, so peak memory is the largest single model.
            stage_device (*optional*): where stage-loaded models run (default: CPU).
            **model_kwargs: passed to the transformers model's `from_pretrained` (e.g. `attn_implementation`).
        """
        source = ComponentSource(pretrained_model_name_or_path, dtype=dtype, model_kwargs=model_kwargs)
        source.require("mllm", "transformers model")
        source.require("processor", "tokenizer / processor files")
        if decoder == "all":
            decoders = [name for name, (transformer, _) in DECODERS.items() if source.has(transformer)]
        elif decoder is None:
            decoders = []
        else:
            decoders = [check_decoder(decoder)]
            source.require(DECODERS[decoder][0], f"{decoder} decoder")
        if decoders:
            source.require("semantic_embedder", "semantic embedder")
            source.require("vae", "VAE")
        names = ["mllm"] + decoder_component_names(decoders)
        lazy = {name for name in names if name in _MODELS} if stage_loading else set()
        components = {name: None if name in lazy else source.load(name) for name in names}
        pipe = cls(processor=source.load("processor"), **components)
        pipe._source, pipe._staged, pipe._stage_device = source, lazy, stage_device
        return pipe

    def save_pretrained(self, save_directory, **kwargs):
        """Write the converted-folder layout (model + processor at the root, pixel parts in subfolders, and
        model_index.json); `from_pretrained(save_directory)` reloads it. Stage-loaded models are loaded one at a
        time to be written."""
        present = []
        for name in SUBFOLDERS:
            if getattr(self, name, None) is None and name not in self._staged:
                continue
            with self._stage(name) as component:
                component.save_pretrained(f"{save_directory}/{SUBFOLDERS[name]}")
            present.append(name)
        write_model_index(save_directory, present, type(self).__name__)

    @property
    def decoders(self) -> list:
        """The decoders this pipeline can run ("normal", "turbo")."""
        return [name for name, (transformer, _) in DECODERS.items()
                if getattr(self, transformer, None) is not None or transformer in self._staged]

    @contextmanager
    def _stage(self, name: str):
        """The component `name`, ready on the execution device. A stage-loaded model is read from disk here and its
        memory released (parameters moved to the meta device) when the block ends."""
        component = getattr(self, name, None)
        if component is not None:
            hook = getattr(component, "_hf_hook", None)
            if hook is not None and hasattr(hook, "pre_forward"):
                # Under enable_model_cpu_offload: bring the model onto the accelerator before any tensor is made
                # from its device (the hook would otherwise move it only at the first forward).
                hook.pre_forward(component)
            yield component
            return
        if name not in self._staged:
            raise ValueError(f"this pipeline has no `{name}`; load it with LLaDA2UniPipeline.from_pretrained(path) "
                             "from a folder converted with every component.")
        component = self._source.load(name)
        if self._stage_device is not None:
            component.to(self._stage_device)
        try:
            yield component
        finally:
            component.to("meta")
            del component
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _device(self):
        return torch.device(self._stage_device) if self._staged and self._stage_device is not None \
            else self._execution_device

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        *,
        image=None,
        question: Union[str, List[str], None] = None,
        instruction: Union[str, List[str], None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        thinking: bool = False,
        num_images_per_prompt: int = 1,
        steps: Optional[int] = None,
        block_length: Optional[int] = None,
        threshold: float = 0.95,
        temperature: float = 0.0,
        guidance_scale: Optional[float] = None,
        cfg_text_scale: Optional[float] = None,
        cfg_image_scale: float = 0.0,
        max_new_tokens: int = 2048,
        thinking_steps: int = 32,
        thinking_max_new_tokens: int = 4096,
        decoder: Optional[str] = None,
        num_inference_steps: Optional[int] = None,
        decoder_guidance_scale: Optional[float] = None,
        resolution_multiplier: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        r"""
        The task follows the inputs: `prompt` alone -> text-to-image; `image` + `question` -> answer text;
        `image` + `instruction` -> edited image. Batches are lists (one image per question / instruction, or one image
        for all of them).

        Args:
            height / width (`int`, *optional*): text-to-image output size in pixels, multiples of
                16 * `resolution_multiplier`; the token grid is height / 32 x width / 32 at the default multiplier.
                Default: the image processor's `generation_size` (1024 for the release, 48 for the shapes model).
            thinking (`bool`): text-to-image with the reasoning phase first (its text comes back in `.text`).
            num_images_per_prompt (`int`, defaults to 1): images per prompt (or per edit instruction).
            steps (`int`, *optional*): LLM denoising steps per block: 8 for images, 32 for answers (the originals).
            block_length, threshold, temperature: the block-diffusion sampler's settings (see docs/generation.md);
                `block_length` defaults to the model config's (32 for the release).
            guidance_scale (`float`, *optional*): text-to-image CFG on the LLM logits (1 disables it). Default: the
                image processor's `generation_guidance_scale` (2.0 for the release).
            cfg_text_scale / cfg_image_scale (`float`, *optional* / defaults to 0.0): editing's three-way CFG.
                `cfg_text_scale` defaults to the image processor's `edit_cfg_text_scale` (4.0 for the release).
            max_new_tokens (`int`, defaults to 2048): answer length budget (understanding).
            thinking_steps / thinking_max_new_tokens: the thinking phase's steps per block and length budget.
            decoder (`str`, *optional*): "turbo" (8 steps, no CFG) or "normal" (49 steps, CFG); default: turbo when
                loaded, else normal.
            num_inference_steps / decoder_guidance_scale (*optional*): the decoder's steps and CFG scale (defaults
                per decoder: 49 / 2.0 normal, 8 / 1.0 turbo).
            resolution_multiplier (`int`, *optional*): decoded pixels per token side = 16 * resolution_multiplier;
                default: the image processor's `generation_resolution_multiplier` (2 for the release).
            generator (`torch.Generator`, *optional*): randomness of the LLM sampler (temperature > 0) and decoder.
            output_type (`str`, defaults to "pil"): "pil", "np", "pt", "latent" or "tokens" (skip the decoder).
            return_dict (`bool`, defaults to True): return `LLaDA2UniPipelineOutput`, else `(images, text)`.
            callback_on_step_end / callback_on_step_end_tensor_inputs: called after each decoder step (see
                `LLaDA2UniDecoderPipeline`).

        Examples:
        """
        task = self._task(prompt, image, question, instruction)
        if output_type not in OUTPUT_TYPES + ("tokens",):
            raise ValueError(f"`output_type` must be one of {', '.join(OUTPUT_TYPES + ('tokens',))}; got "
                             f"{output_type!r}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive int, got {num_images_per_prompt!r}.")
        height, width, resolution_multiplier, block_length, guidance_scale, cfg_text_scale = self._defaults(
            height, width, resolution_multiplier, block_length, guidance_scale, cfg_text_scale)
        llm = {"block_length": block_length, "threshold": threshold, "temperature": temperature,
               "generator": generator}
        decode = None
        if task != "understanding" and output_type != "tokens":
            decode = self._decoder_settings(decoder, num_inference_steps, decoder_guidance_scale,
                                            resolution_multiplier, callback_on_step_end_tensor_inputs)
        if task == "understanding":
            texts = self._understand(image, question, steps=32 if steps is None else steps,
                                     max_new_tokens=max_new_tokens, **llm)
            self.maybe_free_model_hooks()
            return LLaDA2UniPipelineOutput(images=None, text=texts) if return_dict else (None, texts)
        steps = 8 if steps is None else steps
        if task == "t2i":
            grid = self.processor.image_processor.generation_grid(height, width, 16 * _positive(
                resolution_multiplier, "resolution_multiplier"))
            tokens, texts = self._text_to_image(prompt, grid, thinking, num_images_per_prompt, steps=steps,
                                                guidance_scale=guidance_scale, thinking_steps=thinking_steps,
                                                thinking_max_new_tokens=thinking_max_new_tokens, **llm)
        else:
            tokens, texts = self._edit(image, instruction, num_images_per_prompt, steps=steps,
                                       cfg_text_scale=cfg_text_scale, cfg_image_scale=cfg_image_scale, **llm)
        images = None
        if decode is not None:
            images = self._decode(tokens, decode, generator, output_type, callback_on_step_end)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, texts)
        return LLaDA2UniPipelineOutput(images=images, text=texts, image_tokens=tokens)

    # ------------------------------------------------------------------ input checks

    def _mllm_config(self):
        if self.mllm is not None:
            return self.mllm.config
        from transformers_llada_uni import LLaDA2UniConfig  # stage loading: read the config, not the weights

        return LLaDA2UniConfig.from_pretrained(self._source.path("mllm"))

    def _defaults(self, height, width, resolution_multiplier, block_length, guidance_scale, cfg_text_scale) -> tuple:
        """Fill what the caller left out from the model's own files (image processor, LLM config); a processor saved
        before a setting existed gives the release's value."""
        image_processor = self.processor.image_processor

        def recorded(value, name, release):
            return getattr(image_processor, name, release) if value is None else value

        if block_length is None:
            block_length = self._mllm_config().get_text_config().block_length
        return (recorded(height, "generation_size", 1024), recorded(width, "generation_size", 1024),
                recorded(resolution_multiplier, "generation_resolution_multiplier", 2), block_length,
                recorded(guidance_scale, "generation_guidance_scale", 2.0),
                recorded(cfg_text_scale, "edit_cfg_text_scale", 4.0))

    @staticmethod
    def _task(prompt, image, question, instruction) -> str:
        if image is None:
            if question is not None or instruction is not None:
                raise ValueError("`question` and `instruction` need an `image`.")
            if prompt is None:
                raise ValueError("give a `prompt` (text-to-image), or an `image` with a `question` (understanding) "
                                 "or an `instruction` (editing).")
            return "t2i"
        if prompt is not None:
            raise ValueError("with an `image`, pass the text as `question=` (understanding) or `instruction=` "
                             "(editing), not as `prompt`.")
        if (question is None) == (instruction is None):
            raise ValueError("with an `image`, give exactly one of `question` (understanding) and `instruction` "
                             "(editing).")
        return "understanding" if question is not None else "edit"

    def _decoder_settings(self, decoder, num_inference_steps, guidance_scale, resolution_multiplier,
                          tensor_inputs) -> dict:
        available = self.decoders
        if not available:
            raise ValueError("this pipeline has no decoder; load one (LLaDA2UniPipeline.from_pretrained(path)) or "
                             "use output_type='tokens'.")
        decoder = ("turbo" if "turbo" in available else "normal") if decoder is None else check_decoder(decoder)
        if decoder not in available:
            raise ValueError(f"`decoder`={decoder!r} is not loaded (loaded: {', '.join(available)}).")
        defaults = DECODER_DEFAULTS[decoder]
        steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        check_sampler_arguments(steps, scale, resolution_multiplier, tensor_inputs, self._callback_tensor_inputs,
                                guidance_name="decoder_guidance_scale")
        return {"decoder": decoder, "steps": steps, "scale": scale, "rm": resolution_multiplier,
                "tensor_inputs": tuple(tensor_inputs)}

    # ------------------------------------------------------------------ LLM stages

    def _text_to_image(self, prompt, grid, thinking, per_prompt, *, steps, guidance_scale, thinking_steps,
                       thinking_max_new_tokens, **llm):
        prompts = _texts(prompt, "prompt")
        h, w = grid
        with self._stage("mllm") as mllm:
            if thinking:
                tokens, texts = [], []
                for text in prompts:
                    for _ in range(per_prompt):
                        out = mllm.generate_image(
                            text, processor=self.processor, mode="thinking", steps=steps, cfg_scale=guidance_scale,
                            thinking_steps=thinking_steps, thinking_gen_length=thinking_max_new_tokens,
                            image_h=32 * h, image_w=32 * w, **llm)
                        tokens.append(torch.tensor(out["token_ids"]))
                        texts.append(out["thinking"])
                return [_grid_dict(t, h, w) for t in tokens], texts
            batch = self.processor(text=prompts, mode="t2i", grid=(h, w))
            rows = {key: value.repeat_interleave(per_prompt, dim=0).to(mllm.device) for key, value in batch.items()}
            result = mllm.generate_image_tokens(
                rows["input_ids"], attention_mask=rows["attention_mask"], uncond_input_ids=rows["uncond_input_ids"],
                uncond_attention_mask=rows["uncond_attention_mask"], height=h, width=w, cfg_scale=guidance_scale,
                steps=steps, **llm)
        return [_grid_dict(row, h, w) for row in result["token_ids"].cpu()], None

    def _edit(self, image, instruction, per_prompt, *, steps, cfg_text_scale, cfg_image_scale, **llm):
        instructions = _texts(instruction, "instruction")
        images = _images(image, len(instructions))
        tokens = []
        with self._stage("mllm") as mllm:
            for source, text in zip(images, instructions):
                for _ in range(per_prompt):
                    out = mllm.edit_image(image=source, instruction=text, processor=self.processor, steps=steps,
                                          cfg_text_scale=cfg_text_scale, cfg_image_scale=cfg_image_scale, **llm)
                    tokens.append(_grid_dict(torch.tensor(out["token_ids"]), out["h"], out["w"]))
        return tokens, None

    def _understand(self, image, question, *, steps, max_new_tokens, **llm):
        questions = _texts(question, "question")
        images = _images(image, len(questions))
        batch = self.processor(text=questions, images=images, mode="understanding")
        with self._stage("mllm") as mllm:
            inputs = {key: value.to(mllm.device) for key, value in batch.items()}
            out = mllm.generate(inputs.pop("input_ids"), gen_length=max_new_tokens, steps=steps, **inputs, **llm)
        prompt_length = batch["input_ids"].shape[1]
        return self.processor.batch_decode(out[:, prompt_length:].cpu(), skip_special_tokens=True)

    # ------------------------------------------------------------------ pixel stages

    def _decode(self, tokens: list, settings: dict, generator, output_type, callback):
        """Decode every token grid; grids of one size run as one batch, stage by stage."""
        transformer_name, scheduler_name = DECODERS[settings["decoder"]]
        scheduler = getattr(self, scheduler_name) or default_scheduler(settings["decoder"])
        device = self._device()
        groups = {}
        for index, item in enumerate(tokens):
            groups.setdefault((item["h"], item["w"]), []).append(index)
        features = {}
        with self._stage("semantic_embedder") as embedder:
            for grid, indices in groups.items():
                codes = torch.stack([tokens[i]["token_ids"] for i in indices])
                check_grid(codes, grid, embedder.config.vocab_size)
                features[grid] = embed_image_tokens(embedder, codes, grid, device, embedder.dtype)
        latents = {}
        with self._stage(transformer_name) as transformer:
            for grid, indices in groups.items():
                shape = latent_shape(len(indices), grid, settings["rm"], transformer.config.in_channels)
                noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
                latents[grid] = denoise(
                    self, transformer, scheduler, features[grid].to(transformer.dtype), noise,
                    num_inference_steps=settings["steps"], guidance_scale=settings["scale"], generator=generator,
                    callback_on_step_end=callback, callback_on_step_end_tensor_inputs=settings["tensor_inputs"])
        outputs = [None] * len(tokens)
        if output_type == "latent":
            for grid, indices in groups.items():
                for j, index in enumerate(indices):
                    outputs[index] = latents[grid][j]
        else:
            with self._stage("vae") as vae:
                for grid, indices in groups.items():
                    images = decode_latents(vae, latents[grid], "pt")
                    for j, index in enumerate(indices):
                        outputs[index] = images[j]
        if output_type in ("pt", "latent", "np"):
            same_size = len({tuple(o.shape) for o in outputs}) == 1
            if output_type == "np":
                outputs = [to_output_type(o[None], "np")[0] for o in outputs]
                return np.stack(outputs) if same_size else outputs
            return torch.stack(outputs) if same_size else outputs
        return [to_output_type(o[None], "pil")[0] for o in outputs]


def _texts(value, name: str) -> list:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"`{name}` must be a non-empty string or a non-empty list of them, got {value!r}.")
    return list(values)


def _images(image, count: int) -> list:
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if len(images) == 1 and count > 1:
        images = images * count
    if len(images) != count:
        raise ValueError(f"`image` holds {len(images)} images for {count} texts; give one image per text, or one "
                         "for all.")
    return images


def _grid_dict(token_ids, h: int, w: int) -> dict:
    return {"token_ids": token_ids.reshape(-1).long(), "h": int(h), "w": int(w)}


def _positive(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value


__all__ = ["LLaDA2UniPipeline", "LLaDA2UniPipelineOutput"]
