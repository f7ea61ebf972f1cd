"""Image tokens -> pixels: LLaDA2.0-Uni's decoder stage (reference §7) as a diffusers pipeline.

SigVQ embedding of the code grid -> Z-Image transformer (diffusers' own `ZImageTransformer2DModel`) integrated by
`LLaDA2UniFlowMatchEulerScheduler` -> FLUX VAE. Unlike the original `decode_vq_tokens`, nothing is reloaded per call.
"""

import json
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ZImageTransformer2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from .hub_layout import DECODER_DEFAULTS, DECODERS, MODEL_INDEX, check_decoder
from .loading import HUB_KWARGS, ComponentSource, check_vae_config, save_components
from .scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler
from .semantic_embedder import LLaDA2UniSemanticEmbedder, check_grid

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def saved_decoder(source) -> str:
    """The decoder a folder's model_index.json lists alone (a saved decoder pipeline), else turbo when present."""
    index = source.folder / MODEL_INDEX
    listed = []
    if index.is_file():
        entries = json.loads(index.read_text())
        listed = [name for name, (transformer, _) in DECODERS.items() if (entries.get(transformer) or [None])[0]]
    if len(listed) == 1:
        return listed[0]
    return "turbo" if source.has(DECODERS["turbo"][0]) else "normal"

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from diffusers_llada_uni import LLaDA2UniDecoderPipeline

        >>> pipe = LLaDA2UniDecoderPipeline.from_pretrained("path/to/converted", decoder="turbo")
        >>> tokens = model.generate_image("a red fox in snow", processor=processor)  # {"token_ids", "h", "w"}
        >>> image = pipe(image_tokens=tokens["token_ids"], grid_size=(tokens["h"], tokens["w"])).images[0]
        ```
"""


class LLaDA2UniDecoderPipeline(DiffusionPipeline):
    r"""
    Decode a grid of LLaDA2.0-Uni image tokens into an image.

    Components:
        semantic_embedder ([`LLaDA2UniSemanticEmbedder`]): codes -> caption features.
        transformer ([`ZImageTransformer2DModel`]): the normal or the turbo decoder.
        vae ([`AutoencoderKL`]): FLUX VAE (scaling 0.3611, shift 0.1159).
        scheduler ([`LLaDA2UniFlowMatchEulerScheduler`]): its `stochastic_ratio` says which sampler runs
            (0: normal Euler ODE with CFG; > 0: turbo re-noising).
    """

    model_cpu_offload_seq = "semantic_embedder->transformer->vae"
    _callback_tensor_inputs = ["latents", "cap_feats"]

    def __init__(
        self,
        semantic_embedder: LLaDA2UniSemanticEmbedder,
        transformer: ZImageTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: LLaDA2UniFlowMatchEulerScheduler,
    ):
        super().__init__()
        check_vae_config(vae.config, "vae/config.json")
        self.register_modules(semantic_embedder=semantic_embedder, transformer=transformer, vae=vae,
                              scheduler=scheduler)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, decoder: Optional[str] = None, *, dtype=None,
                        device_map=None, variant=None, **kwargs):
        """Load from a converted LLaDA2.0-Uni folder or Hub repo id: `decoder="normal"` (50-point CFG sampler) or
        `"turbo"` (8 CFG-free steps) picks the transformer weights and the sampler (their subfolders:
        `hub_layout.py`). Left out: the one decoder a saved decoder folder holds, else turbo when present.
        `dtype` / `torch_dtype` (one dtype or a per-component dict), `device_map`, `variant` and the Hub arguments
        (`revision`, `cache_dir`, `local_files_only`, `token`, ...) reach every component."""
        dtype, hub_kwargs = ComponentSource.take_arguments(dtype, kwargs)
        if kwargs:
            raise ValueError(f"unsupported arguments: {', '.join(sorted(kwargs))} (accepted: decoder, dtype / "
                             f"torch_dtype, device_map, variant, {', '.join(HUB_KWARGS)}).")
        source = ComponentSource(pretrained_model_name_or_path, dtype=dtype, hub_kwargs=hub_kwargs,
                                 device_map=device_map, variant=variant)
        decoder = check_decoder(decoder) if decoder is not None else saved_decoder(source)
        transformer_name, scheduler_name = DECODERS[decoder]
        for name, what in (("semantic_embedder", "semantic embedder"), (transformer_name, f"{decoder} decoder"),
                           ("vae", "VAE")):
            source.require(name, what)
        pipe = cls(
            semantic_embedder=source.load("semantic_embedder"),
            transformer=source.load(transformer_name),
            vae=source.load("vae"),
            scheduler=source.load(scheduler_name),
        )
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: Optional[str] = None,
                        **kwargs):
        """Write the converted-folder layout (the transformer goes to the subfolder of this pipeline's decoder), so
        that `from_pretrained(save_directory)` reloads it, this decoder included."""
        if kwargs:
            raise ValueError(f"unexpected argument(s) {sorted(kwargs)} for `save_pretrained` (accepted: "
                             "safe_serialization, variant).")
        transformer_name, scheduler_name = DECODERS[self.decoder]
        components = {"semantic_embedder": self.semantic_embedder, transformer_name: self.transformer,
                      "vae": self.vae, scheduler_name: self.scheduler}
        return save_components(components, save_directory, type(self).__name__,
                               safe_serialization=safe_serialization, variant=variant)

    @property
    def decoder(self) -> str:
        return "turbo" if self.scheduler.is_stochastic else "normal"

    # ------------------------------------------------------------------ properties diffusers pipelines expose

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self):
        return self._interrupt

    # ------------------------------------------------------------------ inputs

    def check_inputs(self, image_tokens, grid_size, num_inference_steps, guidance_scale, cfg_normalization,
                     resolution_multiplier, output_type, latents, callback_on_step_end_tensor_inputs):
        """Validate everything before any model runs; returns (codes [B, h*w], (h, w))."""
        image_tokens, grid_size = normalize_tokens(image_tokens, grid_size)
        grid = check_grid(image_tokens, grid_size, self.semantic_embedder.config.vocab_size)
        check_sampler_arguments(num_inference_steps, guidance_scale, resolution_multiplier,
                                callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        if cfg_normalization is not None and not (isinstance(cfg_normalization, (int, float)) and cfg_normalization > 0):
            raise ValueError(f"`cfg_normalization` must be None (no clamp) or a number > 0, got {cfg_normalization!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}.")
        if latents is not None:
            expected = self.latent_shape(image_tokens.shape[0], grid, resolution_multiplier)
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else None
            if shape is not None and len(shape) == 5 and shape[2] == 1:
                shape = shape[:2] + shape[3:]
            if shape != expected:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must be a tensor {expected} (or with a frame axis of 1 at dim 2) for "
                                 f"this grid and resolution_multiplier; got {got}.")
        return image_tokens, grid

    def latent_shape(self, batch: int, grid: Tuple[int, int], resolution_multiplier: int) -> tuple:
        return latent_shape(batch, grid, resolution_multiplier, self.transformer.config.in_channels,
                            self.semantic_embedder.config.upsample_factor)

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image_tokens: Union[torch.LongTensor, Sequence[int], dict, None] = None,
        grid_size: Optional[Tuple[int, int]] = None,
        *,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        cfg_normalization: Optional[float] = 1.0,
        resolution_multiplier: int = 2,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        r"""
        Args:
            image_tokens (`torch.LongTensor` [B, h*w] or [h*w], or a dict from `generate_image`): offset-free VQ
                codes (0 <= code < codebook size), row-major.
            grid_size (`(int, int)`): the token grid (h, w); taken from the dict when `image_tokens` is one.
            num_inference_steps (`int`, *optional*): transformer evaluations per image. Defaults: 49 for the normal
                decoder (the original's `num_steps=50` grid points), 8 for turbo.
            guidance_scale (`float`, *optional*): CFG against all-zero caption features,
                `pred = uncond + guidance_scale * (cond - uncond)`; 1 disables it. Defaults: 2.0 normal (the
                original's `cfg_scale=1.0`), 1.0 turbo.
            cfg_normalization (`float` or None, defaults to 1.0): under CFG, rescale the guided velocity whenever its
                L2 norm exceeds `cfg_normalization` times the conditional one's (the original clamp); None disables.
            resolution_multiplier (`int`, defaults to 2): output pixels per token side = 16 * resolution_multiplier.
            generator (`torch.Generator` or list, *optional*): initial noise and, for turbo, the per-step noise
                (float64, one draw per step in step order), so that `torch.Generator().manual_seed(s)` replays the
                original run seeded with `torch.manual_seed(s)`.
            latents (`torch.Tensor` [B, 16, H, W], *optional*): initial noise (H = 2 * h * resolution_multiplier).
            output_type (`str`, defaults to "pil"): "pil" (as torchvision's `to_pil_image`: `(x * 255)` truncated),
                "np" ([B, H, W, 3] float in [0, 1]), "pt" ([B, 3, H, W] float in [0, 1]) or "latent" (the final
                latents [B, 16, H, W], before the VAE).
            return_dict (`bool`, defaults to True): return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end (`Callable` or `PipelineCallback`, *optional*): called as
                `callback(pipe, step, timestep, callback_kwargs)` after each step; may return replacements for
                `latents`.
            callback_on_step_end_tensor_inputs (`list`, defaults to ["latents"]): what `callback_kwargs` holds
                (from "latents", "cap_feats").

        Examples:
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        defaults = DECODER_DEFAULTS[self.decoder]
        num_inference_steps = defaults["num_inference_steps"] if num_inference_steps is None else num_inference_steps
        guidance_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
        image_tokens, grid = self.check_inputs(
            image_tokens, grid_size, num_inference_steps, guidance_scale, cfg_normalization, resolution_multiplier,
            output_type, latents, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device
        cap_feats = embed_image_tokens(self.semantic_embedder, image_tokens, grid, device, self.transformer.dtype)
        if latents is None:
            shape = self.latent_shape(image_tokens.shape[0], grid, resolution_multiplier)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = denoise(
            self, self.transformer, self.scheduler, cap_feats, latents, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, cfg_normalization=cfg_normalization, generator=generator,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        images = latents if output_type == "latent" else decode_latents(self.vae, latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


# ---------------------------------------------------------------------- the three stages, shared with LLaDA2UniPipeline


def embed_image_tokens(semantic_embedder, image_tokens, grid, device, dtype) -> torch.Tensor:
    """Codes [B, h*w] -> caption features [B, 4hw, C] in the transformer's dtype."""
    return semantic_embedder(image_tokens.to(device), grid).to(dtype)


def denoise(pipe, transformer, scheduler, cap_feats, latents, *, num_inference_steps, guidance_scale,
            cfg_normalization=1.0, generator=None, callback_on_step_end=None,
            callback_on_step_end_tensor_inputs=("latents",)) -> torch.Tensor:
    """Integrate from the noise `latents` [B, 16, H, W] to clean latents (float32) with `scheduler`. `pipe` provides
    the progress bar, `interrupt` and the callback's first argument."""
    device = cap_feats.device
    latents = latents.reshape(latents.shape[0], latents.shape[1], *latents.shape[-2:]).to(device, torch.float32)
    # The turbo sampler keeps its state in float64, as the original does.
    if scheduler.is_stochastic:
        latents = latents.double()
    scheduler.set_timesteps(num_inference_steps, device=device)
    scheduler.set_begin_index(0)
    pipe._num_timesteps = len(scheduler.timesteps)
    with pipe.progress_bar(total=num_inference_steps) as progress_bar:
        for i, t in enumerate(scheduler.timesteps):
            if getattr(pipe, "_interrupt", False):
                continue
            velocity = _velocity(transformer, latents, t, cap_feats, guidance_scale, cfg_normalization)
            latents = scheduler.step(velocity, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents, "cap_feats": cap_feats}
                callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(pipe, i, t, callback_kwargs) or {}
                latents = outputs.pop("latents", latents)
                cap_feats = outputs.pop("cap_feats", cap_feats)
            progress_bar.update()
    return latents.float()


def _velocity(transformer, latents, t, cap_feats, guidance_scale, cfg_normalization):
    """The transformer's velocity at time t for every sample (guided and clamped under CFG), in float32."""
    batch = latents.shape[0]
    samples = list(latents.to(transformer.dtype).unsqueeze(2).unbind(0))
    captions = list(cap_feats.unbind(0))
    use_cfg = guidance_scale > 1.0
    if use_cfg:
        # The unconditional branch sees all-zero caption features of the same length.
        samples, captions = samples + samples, captions + [torch.zeros_like(c) for c in captions]
    out = transformer(samples, t.expand(len(samples)), captions, return_dict=False)[0]
    out = torch.stack([v.float() for v in out]).squeeze(2)
    if not use_cfg:
        return out
    cond, uncond = out[:batch], out[batch:]
    # cond + (g - 1) * (cond - uncond) == uncond + g * (cond - uncond); for g = 2 it is the original's formula.
    guided = cond + (guidance_scale - 1.0) * (cond - uncond)
    if cfg_normalization is not None:
        for j in range(batch):
            limit = torch.linalg.vector_norm(cond[j]) * cfg_normalization
            norm = torch.linalg.vector_norm(guided[j])
            if norm > limit:
                guided[j] = guided[j] * (limit / norm)
    return guided


def decode_latents(vae, latents: torch.Tensor, output_type: str = "pt"):
    """Latents [B, 16, H, W] -> images in [0, 1] (`output_type` "pt", "np" or "pil")."""
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    images = vae.decode(scaled, return_dict=False)[0]
    images = ((images.float() + 1) / 2).clamp(0, 1)
    return to_output_type(images, output_type)


def latent_shape(batch, grid, resolution_multiplier, channels=16, upsample_factor=2) -> tuple:
    """Each token covers (2 * resolution_multiplier)^2 latent cells: 16 * resolution_multiplier pixels a side."""
    scale = upsample_factor * resolution_multiplier
    return (batch, channels, grid[0] * scale, grid[1] * scale)


def to_output_type(images: torch.Tensor, output_type: str):
    """[B, 3, H, W] floats in [0, 1] -> "pt" (as is), "np" ([B, H, W, 3] float32) or "pil" (uint8 by truncation,
    as the original's `to_pil_image`)."""
    if output_type == "pt":
        return images
    if output_type == "np":
        return images.permute(0, 2, 3, 1).cpu().numpy()
    pixels = (images * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


def normalize_tokens(image_tokens, grid_size):
    """Accept [B, h*w] / [h*w] tensors, lists, or `generate_image`'s dict; returns (LongTensor [B, h*w], grid)."""
    if image_tokens is None:
        raise ValueError("`image_tokens` is required: offset-free codes [batch, h*w] with `grid_size=(h, w)`.")
    if isinstance(image_tokens, dict):
        if "token_ids" not in image_tokens:
            raise ValueError("an `image_tokens` dict must hold `token_ids` (and `h`, `w`), as generate_image returns.")
        if grid_size is None:
            grid_size = (image_tokens.get("h", image_tokens.get("height")),
                         image_tokens.get("w", image_tokens.get("width")))
        image_tokens = image_tokens["token_ids"]
    if isinstance(image_tokens, (list, tuple, np.ndarray)):
        try:
            image_tokens = torch.as_tensor(np.asarray(image_tokens), dtype=torch.long)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`image_tokens` must be rows of integer codes: {exc}") from None
    if isinstance(image_tokens, torch.Tensor) and image_tokens.dim() == 1:
        image_tokens = image_tokens.unsqueeze(0)
    if isinstance(grid_size, (tuple, list)):
        grid_size = tuple(int(side) if isinstance(side, (np.integer, torch.Tensor)) else side for side in grid_size)
    return image_tokens, grid_size


def check_sampler_arguments(num_inference_steps, guidance_scale, resolution_multiplier, tensor_inputs, allowed,
                            guidance_name: str = "guidance_scale"):
    """The decoder call's numeric arguments, checked before any model runs (shared with LLaDA2UniPipeline)."""
    if not _is_int(num_inference_steps) or num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be a positive int, got {num_inference_steps!r}.")
    if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) or guidance_scale < 1:
        raise ValueError(f"`{guidance_name}` must be a number >= 1 (1 disables the decoder's classifier-free guidance; "
                         f"the original's normal decoder uses 2.0), got {guidance_scale!r}.")
    if not _is_int(resolution_multiplier) or resolution_multiplier < 1:
        raise ValueError(f"`resolution_multiplier` must be a positive int, got {resolution_multiplier!r}.")
    unknown = [name for name in tensor_inputs or () if name not in allowed]
    if unknown:
        raise ValueError(f"`callback_on_step_end_tensor_inputs` may name {allowed}; got {unknown}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = [
    "LLaDA2UniDecoderPipeline",
    "check_sampler_arguments",
    "decode_latents",
    "denoise",
    "embed_image_tokens",
    "latent_shape",
    "normalize_tokens",
    "to_output_type",
]
