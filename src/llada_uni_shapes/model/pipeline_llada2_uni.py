"""One pipeline for the LLaDA2.0-Uni tasks: prompt -> image, image + question -> text, image + instruction -> image,
and prompt -> an interleaved answer of text and images. The transformers model (`mllm`) produces image tokens or
text; the decoder stages of `pipeline_llada2_uni_decoder.py` turn image tokens into pixels. The pipeline owns no
model math.
"""

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

# Every sibling module is imported here: diffusers copies only a remote pipeline file's direct imports into its
# modules cache (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`).
from .llada2_uni_loaders import LLaDA2UniModelLoader  # noqa: F401
from .scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler  # noqa: F401
from .hub_files import staged_save, upload_folder, write_pipeline_files
from .hub_layout import (
    DECODER_DEFAULTS,
    DECODERS,
    SUBFOLDERS,
    check_decoder,
    default_scheduler,
)
from .loading import ComponentSource, check_vae_config, decoder_component_names, save_component
from .model_card import write_model_card
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
        >>> story = pipe("draw a fox then make it night", interleaved=True).segments[0]  # [str, PIL image, ...]
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
        segments: interleaved generation only: per prompt, the answer in order, each item a `str` or an image (of
            `output_type`; the token dict for "tokens").
        history: with `output_history=True`: per LLM generate call of this pipeline call, the generated region after
            every forward (`LLaDA2GenerateOutput.history`: a tuple of LongTensor [rows, generated length]).
    """

    images: Optional[Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]]
    text: Optional[List[str]] = None
    image_tokens: Optional[List[dict]] = None
    segments: Optional[List[list]] = None
    history: Optional[List[tuple]] = None


class LLaDA2UniPipeline(DiffusionPipeline):
    r"""
    LLaDA2.0-Uni: text-to-image (optionally with a thinking phase), image understanding, image editing (one or
    several source images) and interleaved generation (one answer mixing text and images).

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
        if vae is not None:
            check_vae_config(vae.config, "vae/config.json")
        self.register_modules(processor=processor, mllm=mllm, semantic_embedder=semantic_embedder,
                              transformer=transformer, vae=vae, scheduler=scheduler,
                              transformer_turbo=transformer_turbo, scheduler_turbo=scheduler_turbo)
        self._source: Optional[ComponentSource] = None
        self._staged: set = set()
        self._stage_device = None

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, decoder: Optional[str] = "all", dtype=None,
                        stage_loading: bool = False, stage_device=None, device_map=None, variant=None,
                        **kwargs):
        r"""
        Load everything from one converted folder or Hub repo id (the transformers model at the root, the pixel
        parts in subfolders; see docs/pipelines.md). `DiffusionPipeline.from_pretrained(path_or_repo,
        trust_remote_code=True)` loads the same folder without this package.

        Args:
            decoder (`str` or None, defaults to "all"): which decoders to load: "all" (every one the folder has),
                "normal", "turbo", or None (no pixel side: understanding only).
            dtype / torch_dtype (`torch.dtype` or `dict`, *optional*): dtype of every model, or per component
                (`{"mllm": torch.bfloat16, "default": torch.float32}`); default: as stored.
            stage_loading (`bool`, defaults to False): load nothing now; each call loads a model from disk only for
                the stage that needs it and frees it right after, so peak memory is the largest single model.
            stage_device (*optional*): where stage-loaded models run (default: CPU).
            device_map, variant (*optional*): passed to every model's `from_pretrained`.
            revision, cache_dir, local_files_only, token, force_download, proxies: where a repo id's files come from.
            **kwargs: passed to the transformers model's `from_pretrained` (e.g. `attn_implementation`).
        """
        dtype, hub_kwargs = ComponentSource.take_arguments(dtype, kwargs)
        source = ComponentSource(pretrained_model_name_or_path, dtype=dtype, model_kwargs=kwargs,
                                 hub_kwargs=hub_kwargs, device_map=device_map, variant=variant)
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
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: Optional[str] = None,
                        push_to_hub: bool = False, **kwargs):
        """Write the one-folder layout (model + processor at the root, pixel parts in subfolders, the code files
        and model_index.json diffusers reads, a model card); `from_pretrained(save_directory)` and
        `DiffusionPipeline.from_pretrained(save_directory, trust_remote_code=True)` reload it. Stage-loaded models
        are loaded one at a time to be written. `push_to_hub=True` uploads the folder (`repo_id=`, `token=`,
        `private=`, `commit_message=`)."""
        folder = Path(save_directory)
        present = [name for name in SUBFOLDERS if getattr(self, name, None) is not None or name in self._staged]
        source = getattr(self.config, "_name_or_path", None)
        with staged_save(folder) as staging:  # no half-written file in `folder`, whatever happens
            for name in present:
                with self._stage(name) as component:
                    save_component(component, staging / SUBFOLDERS[name], safe_serialization, variant)
            write_pipeline_files(staging, present, type(self).__name__)
            if not (folder / "README.md").exists():
                write_model_card(staging, base_model=source if source and not Path(source).is_dir() else None)
        if push_to_hub:
            upload_folder(folder, **kwargs)
        elif kwargs:
            raise ValueError(f"unexpected argument(s) {sorted(kwargs)} for `save_pretrained` (they go with "
                             "push_to_hub=True: repo_id, token, private, commit_message).")
        return folder

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

    @contextmanager
    def _llm_progress(self, mllm):
        """A progress bar over the LLM's denoising forwards (their number depends on how fast blocks settle, so it
        counts up without a total); `set_progress_bar_config` controls it like the decoder's."""
        settings = {"desc": "LLM denoising steps", "unit": "step", **getattr(self, "_progress_bar_config", {})}
        with tqdm(total=None, **settings) as bar:
            def count(module, args):
                bar.update()  # (a pre-hook's return value would replace the forward's arguments)

            handle = mllm.register_forward_pre_hook(count)
            try:
                yield
            finally:
                handle.remove()

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
        interleaved: bool = False,
        num_images_per_prompt: int = 1,
        generation_config=None,
        decoder: Optional[str] = None,
        num_inference_steps: Optional[int] = None,
        decoder_guidance_scale: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        **generation_kwargs,
    ):
        r"""
        The task follows the inputs: `prompt` alone -> text-to-image; `image` + `question` -> answer text;
        `image` + `instruction` -> edited image; `prompt` + `interleaved=True` (optionally with `image`) -> an
        answer of text and images in order (`.segments`). Batches are lists (one image per question / instruction,
        or one image for all of them; a list of images for one text: several pictures, e.g. `image=[[a, b]]`).

        Args:
            height / width (`int`, *optional*): text-to-image output size in pixels, multiples of `pixels_per_token`
                (the generation config's `image_height` / `image_width` when left out).
            thinking (`bool`): text-to-image with the reasoning phase first (its text comes back in `.text`).
            interleaved (`bool`): interleaved generation: `.segments[i]` is prompt i's answer as text and images in
                order, `.text[i]` its text joined, `.images` every complete image in order (one LLM run per prompt).
            num_images_per_prompt (`int`, defaults to 1): images per prompt (or per edit instruction).
            generation_config (`LLaDA2GenerationConfig`, *optional*): the LLM's sampling settings (default: the
                model's `generation_config.json`); `**generation_kwargs` override single fields, e.g. `threshold`,
                `temperature`, `block_length`, `guidance_scale`, `edit_guidance_scale` (`cfg_text_scale`),
                `image_guidance_scale` (`cfg_image_scale`), `max_new_tokens`, `thinking_max_new_tokens`, `sprint`,
                `pixels_per_token`. `steps` is the LLM's steps per block of the task at hand (`image_steps` for
                images); `resolution_multiplier` sets `pixels_per_token` = 16 x it.
            decoder (`str`, *optional*): "turbo" (8 steps, no CFG) or "normal" (49 steps, CFG); default: turbo when
                loaded, else normal.
            num_inference_steps / decoder_guidance_scale (*optional*): the decoder's steps and CFG scale (defaults
                per decoder: 49 / 2.0 normal, 8 / 1.0 turbo).
            generator (`torch.Generator`, *optional*): randomness of the LLM sampler and of the decoder.
            output_type (`str`, defaults to "pil"): "pil", "np", "pt", "latent" or "tokens" (skip the decoder).
            return_dict (`bool`, defaults to True): return `LLaDA2UniPipelineOutput`, else `(images, text)`.
            output_history (generation keyword): also return the LLM's per-step canvases in `.history`.
            callback_on_step_end / callback_on_step_end_tensor_inputs: called after each decoder step (see
                `LLaDA2UniDecoderPipeline`); setting `pipe._interrupt = True` there ends this call's decoding.

        Examples:
        """
        self._interrupt = False  # a callback may have interrupted the previous call
        task = "interleaved" if interleaved else self._task(prompt, image, question, instruction)
        if interleaved and (prompt is None or question is not None or instruction is not None):
            raise ValueError("`interleaved=True` takes a `prompt` (and optionally `image`), not `question` / "
                             "`instruction`.")
        if output_type not in OUTPUT_TYPES + ("tokens",):
            raise ValueError(f"`output_type` must be one of {', '.join(OUTPUT_TYPES + ('tokens',))}; got "
                             f"{output_type!r}.")
        if not isinstance(num_images_per_prompt, int) or isinstance(num_images_per_prompt, bool) \
                or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive int, got {num_images_per_prompt!r}.")
        if thinking and task != "t2i":
            raise ValueError("`thinking` applies to text-to-image (a `prompt` without an image).")
        if interleaved and num_images_per_prompt != 1:
            raise ValueError("`num_images_per_prompt` applies to text-to-image and editing, not to `interleaved`.")
        settings = _generation_overrides(generation_kwargs, task, height, width)
        llm = {"generation_config": generation_config, "generator": generator, **settings}
        self._histories = [] if settings.get("output_history") else None
        with self._stage("mllm") as mllm, self._llm_progress(mllm):
            # The model resolves (and checks) the settings: its generation_config.json holds every default.
            config, _ = mllm._generation_settings(generation_config, dict(settings))
            decode = None
            if task != "understanding" and output_type != "tokens":
                decode = self._decoder_settings(decoder, num_inference_steps, decoder_guidance_scale,
                                                _multiplier(config.pixels_per_token),
                                                callback_on_step_end_tensor_inputs)
            texts, tokens, answers = None, None, None
            if task == "understanding":
                texts = self._understand(mllm, image, question, llm)
            elif task == "interleaved":
                answers = self._interleave(mllm, prompt, image, llm)
                tokens = [item for answer in answers for item in answer if isinstance(item, dict)]
                texts = [" ".join(item for item in answer if isinstance(item, str)) for answer in answers]
            elif task == "t2i":
                grid = self.processor.image_processor.generation_grid(config.image_height, config.image_width,
                                                                      config.pixels_per_token)
                tokens, texts = self._text_to_image(mllm, prompt, grid, thinking, num_images_per_prompt, llm)
            else:
                tokens = self._edit(mllm, image, instruction, num_images_per_prompt, llm)
        images = None
        if decode is not None and tokens:
            images = self._decode(tokens, decode, generator, output_type, callback_on_step_end)
        self.maybe_free_model_hooks()
        history, self._histories = self._histories, None
        if task == "understanding":
            if not return_dict:
                return (None, texts)
            return LLaDA2UniPipelineOutput(images=None, text=texts, history=history)
        segments = None
        if answers is not None:
            pictures = iter(images if images is not None else tokens)
            segments = [[item if isinstance(item, str) else next(pictures) for item in answer] for answer in answers]
        if not return_dict:
            return (images, texts)
        return LLaDA2UniPipelineOutput(images=images, text=texts, image_tokens=tokens, segments=segments,
                                       history=history)

    # ------------------------------------------------------------------ input checks

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

    # ------------------------------------------------------------------ LLM stages: processor -> generate()

    def _keep_history(self, out):
        if getattr(self, "_histories", None) is not None:
            self._histories.append(out.history)

    def _image_tokens(self, mllm, batch, mode, per_prompt, llm) -> tuple:
        inputs = mllm._to_device(batch)
        out = mllm.generate(**inputs, generation_mode=mode, num_return_sequences=per_prompt,
                            return_dict_in_generate=True, **llm)
        self._keep_history(out)
        h, w = out.image_grid
        tokens = [_grid_dict(row, h, w) for row in out.image_tokens.cpu()]
        return tokens, out.thinking_ids

    def _text_to_image(self, mllm, prompt, grid, thinking, per_prompt, llm):
        # The unconditional rows are always built: generate() skips them when the guidance scale is 1.
        batch = self.processor(text=_texts(prompt, "prompt"), mode="t2i", grid=grid, thinking=thinking)
        tokens, thoughts = self._image_tokens(mllm, batch, "thinking" if thinking else "image", per_prompt, llm)
        texts = None
        if thoughts is not None:
            texts = [self.processor.decode(ids, skip_special_tokens=True) for ids in thoughts]
        return tokens, texts

    def _edit(self, mllm, image, instruction, per_prompt, llm):
        """All edits whose sources give one output grid run as one batch (the grid follows the first source). The
        image-dropped rows are always built; generate() runs them only when `image_guidance_scale` != 0."""
        instructions = _texts(instruction, "instruction")
        sources = _images(image, len(instructions))
        groups = {}
        for index, source in enumerate(sources):
            first = source[0] if isinstance(source, (list, tuple)) else source
            groups.setdefault(self._edit_grid(first), []).append(index)
        tokens = [None] * (len(instructions) * per_prompt)
        for indices in groups.values():
            batch = self.processor(text=[instructions[i] for i in indices], images=[sources[i] for i in indices],
                                   mode="edit", image_cfg=True)
            grids, _ = self._image_tokens(mllm, batch, "image", per_prompt, llm)
            for j, index in enumerate(indices):
                tokens[index * per_prompt : (index + 1) * per_prompt] = grids[j * per_prompt : (j + 1) * per_prompt]
        return tokens

    def _edit_grid(self, source) -> tuple:
        source = self.processor._check_image(source)
        return self.processor.image_processor.edit_grid(source, max_grid_side=self.processor.num_reserved_tokens - 1)

    def _understand(self, mllm, image, question, llm):
        questions = _texts(question, "question")
        batch = self.processor(text=questions, images=_images(image, len(questions)), mode="understanding")
        inputs = mllm._to_device(batch)
        out = mllm.generate(**inputs, generation_mode="text", return_dict_in_generate=True, **llm)
        self._keep_history(out)
        prompt_length = batch["input_ids"].shape[1]
        return self.processor.batch_decode(out.sequences[:, prompt_length:].cpu(), skip_special_tokens=True)

    def _interleave(self, mllm, prompt, image, llm) -> list:
        """Per prompt (one LLM run each: interleaved generation is batch 1), its answer as `str` items and token
        dicts of the complete images, in order. Images that ran out of room are left out."""
        prompts = _texts(prompt, "prompt")
        sources = [None] * len(prompts) if image is None else _images(image, len(prompts))
        answers = []
        for text, source in zip(prompts, sources):
            batch = self.processor(text=text, images=None if source is None else [source], mode="interleaved")
            inputs = mllm._to_device(batch)
            out = mllm.generate(**inputs, generation_mode="interleaved", return_dict_in_generate=True, **llm)
            self._keep_history(out)
            generated = out.sequences[0, batch["input_ids"].shape[1]:].cpu()
            answer = []
            for segment in self.processor.split_generation(generated):
                if segment["type"] == "text":
                    answer.append(segment["text"].strip())
                elif segment["complete"]:
                    answer.append(_grid_dict(segment["token_ids"], segment["height"], segment["width"]))
            answers.append([item for item in answer if not isinstance(item, str) or item])
        return answers

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


def _generation_overrides(kwargs: dict, task: str, height, width) -> dict:
    """The call's LLM settings as generation-config fields: `steps` is the task's budget (image steps for images),
    `resolution_multiplier` is `pixels_per_token` / 16, `height` / `width` the text-to-image size in pixels."""
    settings = {key: value for key, value in kwargs.items() if value is not None}
    if task != "understanding" and "steps" in settings:
        settings["image_steps"] = settings.pop("steps")
    multiplier = settings.pop("resolution_multiplier", None)
    if multiplier is not None:
        settings["pixels_per_token"] = 16 * _positive(multiplier, "resolution_multiplier")
    if task == "t2i":
        if height is not None:
            settings["image_height"] = height
        if width is not None:
            settings["image_width"] = width
    elif height is not None or width is not None:
        raise ValueError("`height` / `width` apply to text-to-image; edits keep the source image's grid.")
    return settings


def _multiplier(pixels_per_token: int) -> int:
    if pixels_per_token % 16:
        raise ValueError(f"`pixels_per_token` ({pixels_per_token}) must be a multiple of 16 (the decoder's "
                         "latent cell).")
    return pixels_per_token // 16


def _texts(value, name: str) -> list:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(f"`{name}` must be a non-blank string or a non-empty list of them, got {value!r}.")
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
