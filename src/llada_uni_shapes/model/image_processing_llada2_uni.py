"""Image processor for the LLaDA2.0-Uni SigLIP-VQ tokenizer: pixels -> 16x16 patches on a token grid.

Three input paths of the original, chosen with `mode`:
- "understanding": Qwen2.5-VL-style smart resize to a multiple of 32 px (128^2..800^2 px for one image, 448^2 max
  when several images are given), bicubic resize to cover, centre crop.
- "edit": `var_center_crop` onto the candidate size (multiples of 32 px, at most 256 such cells, aspect <= 4) whose
  aspect ratio best matches; the faithful default cuts that many pixels out of the unscaled image (black borders
  when it is smaller); `edit_crop="cover"` resizes to cover first (what SGLang-Omni does).
- "none" (or `do_resize=False`): the image is used as it is; its sides must be multiples of the patch size.
Pixels are rescaled then normalised in float32 (mean = std = 0.5), exactly as the original tokenizer does. Every image
(file, URL, PIL image or array) first takes one path, `to_rgb`: EXIF orientation applied, 16-bit pixels scaled to 8
bits, transparency composited onto white.
"""

import base64
import binascii
import io
import math
import os
from typing import Optional

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils import logging

logger = logging.get_logger(__name__)

MODES = ("understanding", "edit", "none")


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 32) -> tuple:
    """Target (h, w), multiples of `factor`, with area in [min_pixels, max_pixels] and the input's aspect ratio."""
    h_bar = max(round(height / factor) * factor, factor)
    w_bar = max(round(width / factor) * factor, factor)
    if h_bar * w_bar > max_pixels:
        scale = math.sqrt(max_pixels / (height * width))
        h_bar = max(math.floor(height * scale / factor) * factor, factor)
        w_bar = max(math.floor(width * scale / factor) * factor, factor)
    elif h_bar * w_bar < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * scale / factor) * factor
        w_bar = math.ceil(width * scale / factor) * factor
    return h_bar, w_bar


def cover_geometry(width: int, height: int, target_h: int, target_w: int, factor: int = 32) -> tuple:
    """((resized w, h), (crop w, h)) of `resize_to_cover_and_crop`, computed without touching pixels."""
    scale = max(target_h / height, target_w / width)
    new_h, new_w = int(round(height * scale)), int(round(width * scale))
    return (new_w, new_h), (max((new_w // factor) * factor, target_w), max((new_h // factor) * factor, target_h))


def resize_to_cover_and_crop(image, target_h: int, target_w: int, factor: int = 32):
    """Bicubic resize so the image covers (target_h, target_w), then a centred crop aligned to `factor`."""
    from PIL import Image

    (new_w, new_h), (crop_w, crop_h) = cover_geometry(image.width, image.height, target_h, target_w, factor)
    image = image.resize((new_w, new_h), resample=Image.BICUBIC)
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return image.crop((left, top, left + crop_w, top + crop_h))


def crop_size_candidates(num_cells: int, cell: int, max_ratio: float = 4.0) -> list:
    """(width, height) pairs of `cell`-pixel cells, at most `num_cells` of them, aspect ratio <= `max_ratio`."""
    sizes, wp, hp = [], num_cells, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * cell, hp * cell))
        if (hp + 1) * wp <= num_cells:
            hp += 1
        else:
            wp -= 1
    return sizes


def best_crop_size(width: int, height: int, candidates: list) -> tuple:
    """The candidate whose aspect ratio is closest to the image's (ties: the larger size)."""
    scored = [(min(cw / width, ch / height) / max(cw / width, ch / height), (cw, ch)) for cw, ch in candidates]
    return max(scored)[1]


def _is_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as huggingface_hub reads them, at call time (remote code imports only
    torch and transformers, so the flag is read from the environment rather than from huggingface_hub)."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_image(source, name: str = "images"):
    """The one loader of image files: a path (str or os.PathLike), an http(s) URL or a `data:image/...;base64,` URI ->
    an opened PIL image, fully read (the file is closed) and not yet converted (`to_rgb` does that, so files and
    in-memory images take the same conversion). URLs are refused when HF_HUB_OFFLINE=1: offline means no download."""
    from PIL import Image

    text = os.fspath(source)
    try:
        if text.startswith(("http://", "https://")):
            if _is_offline():
                raise ValueError(f"`{name}`: {text} is a URL but HF_HUB_OFFLINE is set; download the image and pass "
                                 "the file (or unset HF_HUB_OFFLINE).")
            import urllib.request

            with urllib.request.urlopen(text, timeout=30) as response:
                stream = io.BytesIO(response.read())
        elif text.startswith("data:image/"):
            stream = io.BytesIO(base64.b64decode(text.partition(",")[2], validate=True))
        else:
            stream = open(text, "rb")
        with stream, Image.open(stream) as opened:
            opened.load()  # read everything now: a truncated file fails here, not halfway through preprocessing
            return opened.copy()  # the file closes here; the copy keeps the pixels and `info` (EXIF, transparency)
    except (OSError, binascii.Error, Image.DecompressionBombError) as exc:  # not the offline refusal above
        shown = text if len(text) < 200 else text[:60] + "..."
        raise ValueError(f"`{name}`: cannot read the image {shown}: {exc}") from None


def _to_8bit(image):
    """16-bit and 32-bit single-channel images ("I;16*", "I", "F") as 8-bit "L". Pillow's own convert clips such
    values at 255, which turns a 16-bit PNG all white. Integers above 255 are read as 16-bit (x / 257); floats in
    [0, 1] as normalised (x * 255); anything else is taken to be on the 8-bit scale already."""
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0
    else:
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 0.0
        if top > 255:
            values = values / 257.0
        elif image.mode == "F" and top <= 1.0:
            values = values * 255.0
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image, name: str = "images"):
    """A PIL RGB image from a PIL image, a path / URL (see `load_image`) or an HxWx3 / HxWx4 uint8 (or uint16)
    array. Every input takes this one path: EXIF orientation is applied, 16-bit pixels are scaled to 8 bits, and
    transparency (an alpha band or a `transparency` entry) is composited onto white."""
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        image = load_image(image, name)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"`{name}` arrays must be uint8 (or uint16) with shape [height, width, 3 or 4] (RGB / RGBA); got "
                f"dtype {image.dtype} and shape {list(image.shape)}."
            )
        if image.dtype == np.uint16:
            image = np.rint(image / 257.0).astype(np.uint8)
        image = Image.fromarray(image, mode="RGBA" if image.shape[-1] == 4 else "RGB")
    if not isinstance(image, Image.Image):
        raise ValueError(f"`{name}` must hold PIL images, uint8 arrays or paths, got {type(image).__name__}.")
    if image.width <= 0 or image.height <= 0:
        raise ValueError(f"`{name}` has an empty image ({image.width}x{image.height}).")
    image = ImageOps.exif_transpose(image)  # a copy without the orientation tag, so applying it twice is harmless
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# Settings earlier releases kept in processor_config.json; they are LLaDA2GenerationConfig fields now
# (image_height / image_width, pixels_per_token, guidance_scale, edit_guidance_scale).
_MOVED_TO_GENERATION_CONFIG = ("generation_size", "generation_resolution_multiplier", "generation_guidance_scale",
                               "edit_cfg_text_scale")


class LLaDA2UniImageProcessor(BaseImageProcessor):
    r"""
    Turns images into SigLIP-VQ patches: `pixel_values` [total patches, 3*16*16] (channel-major inside a patch,
    row-major over the grid) and `image_grid_thw` [num_images, 3] = (1, height/16, width/16).

    Args:
        patch_size (`int`, defaults to 16), temporal_patch_size (`int`, defaults to 1)
        merge_size (`int`, defaults to 1): must stay 1 (larger values scramble the row-major token order); a
            config that says otherwise is overridden with a warning.
        image_mean / image_std (defaults to 0.5), rescale_factor (defaults to 1/255)
        mode (`str`, defaults to "understanding"): default input path, see the module docstring.
        resize_factor (`int`, defaults to 32): side granularity of the understanding / edit paths.
        min_pixels / max_pixels (defaults to 128^2 / 800^2), multi_image_max_pixels (defaults to 448^2)
        edit_max_cells (`int`, defaults to 256), edit_max_ratio (`float`, defaults to 4.0)
        edit_crop (`str`, defaults to "center"): "center" (faithful) or "cover".

    Generation settings (output size, pixels per token, guidance scales) live in the model's `generation_config.json`
    (`LLaDA2GenerationConfig`); the keys earlier releases of this project stored here are ignored when read.
    """

    model_input_names = ["pixel_values", "image_grid_thw"]

    def __init__(
        self,
        patch_size: int = 16,
        temporal_patch_size: int = 1,
        merge_size: int = 1,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        rescale_factor: float = 1 / 255,
        do_rescale: bool = True,
        do_normalize: bool = True,
        do_resize: bool = True,
        mode: str = "understanding",
        resize_factor: int = 32,
        min_pixels: int = 128 * 128,
        max_pixels: int = 800 * 800,
        multi_image_max_pixels: int = 448 * 448,
        edit_max_cells: int = 256,
        edit_max_ratio: float = 4.0,
        edit_crop: str = "center",
        **kwargs,
    ):
        for legacy in ("size", "resample", "image_processor_type", "processor_class", *_MOVED_TO_GENERATION_CONFIG):
            kwargs.pop(legacy, None)
        super().__init__(**kwargs)
        if merge_size != 1:
            logger.warning(f"merge_size={merge_size} would scramble the VQ token order; using merge_size=1.")
        if temporal_patch_size != 1:
            raise ValueError(f"`temporal_patch_size` must be 1 for still images, got {temporal_patch_size}.")
        self.patch_size = patch_size
        self.temporal_patch_size = 1
        self.merge_size = 1
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.rescale_factor = rescale_factor
        self.do_rescale = do_rescale
        self.do_normalize = do_normalize
        self.do_resize = do_resize
        self.mode = self._check_mode(mode)
        self.resize_factor = resize_factor
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.multi_image_max_pixels = multi_image_max_pixels
        self.edit_max_cells = edit_max_cells
        self.edit_max_ratio = edit_max_ratio
        self.edit_crop = self._check_edit_crop(edit_crop)

    @staticmethod
    def _check_mode(mode):
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        return mode

    @staticmethod
    def _check_edit_crop(edit_crop):
        if edit_crop not in ("center", "cover"):
            raise ValueError(f"`edit_crop` must be 'center' or 'cover', got {edit_crop!r}.")
        return edit_crop

    def fit(self, image, mode: str, num_images: int = 1, edit_crop: Optional[str] = None,
            max_grid_side: Optional[int] = None):
        """Apply one input path's geometry to an RGB PIL image. `max_grid_side` (tokens) is the largest grid side the
        prompt can write; a path whose size would exceed it is scaled down to fit (the release tokenizer writes
        at least 64, more than the 50 of the 800 px limit, so the release's own sizes never change)."""
        largest = None if max_grid_side is None else max_grid_side * self.patch_size
        if mode == "understanding":
            max_pixels = self.max_pixels if num_images == 1 else self.multi_image_max_pixels
            target = smart_resize(image.height, image.width, self.min_pixels, max_pixels, self.resize_factor)
            if largest is not None and max(target) > largest:
                scale = largest / max(target)
                target = tuple(max(math.floor(side * scale / self.resize_factor) * self.resize_factor,
                                   self.resize_factor) for side in target)
            return resize_to_cover_and_crop(image, *target, factor=self.resize_factor)
        if mode == "edit":
            crop_w, crop_h = self._edit_target(image.width, image.height, max_grid_side)
            if (edit_crop or self.edit_crop) == "cover":
                return resize_to_cover_and_crop(image, crop_h, crop_w, factor=self.resize_factor)
            left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
            return image.crop((left, top, left + crop_w, top + crop_h))  # outside the image: black
        return image

    def _edit_target(self, width: int, height: int, max_grid_side: Optional[int]) -> tuple:
        """The edit path's (width, height) target: the candidate crop closest to the image's aspect ratio."""
        candidates = crop_size_candidates(self.edit_max_cells, self.resize_factor, self.edit_max_ratio)
        if max_grid_side is not None:
            largest = max_grid_side * self.patch_size
            candidates = [size for size in candidates if max(size) <= largest] or candidates
        return best_crop_size(width, height, candidates)

    def edit_grid(self, image, edit_crop: Optional[str] = None, max_grid_side: Optional[int] = None) -> tuple:
        """The token grid (h, w) `preprocess(image, mode="edit")` gives this image, read from its size alone (the
        pipeline groups edits by output grid before building their prompts)."""
        image = to_rgb(image)
        crop_w, crop_h = self._edit_target(image.width, image.height, max_grid_side)
        if (edit_crop or self.edit_crop) == "cover":
            _, (crop_w, crop_h) = cover_geometry(image.width, image.height, crop_h, crop_w, self.resize_factor)
        return crop_h // self.patch_size, crop_w // self.patch_size

    def patchify(self, image) -> torch.Tensor:
        """RGB PIL image (sides multiples of patch_size) -> [h*w, 3*p*p] float32."""
        p = self.patch_size
        if image.width % p or image.height % p:
            raise ValueError(
                f"`images`: a {image.width}x{image.height} image is not a multiple of the {p}-pixel patch; use a "
                "resizing `mode` or crop it first."
            )
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).to(torch.float32)
        if self.do_rescale:
            pixels = pixels * torch.tensor(self.rescale_factor, dtype=torch.float32)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
            pixels = (pixels - mean) / std
        h, w = image.height // p, image.width // p
        return pixels.view(3, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, 3 * p * p)

    def preprocess(
        self,
        images,
        mode: Optional[str] = None,
        do_resize: Optional[bool] = None,
        edit_crop: Optional[str] = None,
        return_tensors="pt",
        max_grid_side: Optional[int] = None,
        **kwargs,
    ) -> BatchFeature:
        """`images`: one image or a list. Returns `pixel_values` and `image_grid_thw` (see the class docstring).
        `max_grid_side`: the largest grid side (tokens) the caller's tokenizer can write (see `fit`)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("`images` is empty.")
        mode = self._check_mode(mode or self.mode)
        if edit_crop is not None:
            self._check_edit_crop(edit_crop)
        if not (self.do_resize if do_resize is None else do_resize):
            mode = "none"
        patches, grids = [], []
        for image in images:
            image = self.fit(to_rgb(image), mode, num_images=len(images), edit_crop=edit_crop,
                             max_grid_side=max_grid_side)
            if image.width < self.patch_size or image.height < self.patch_size:
                raise ValueError(f"`images`: {image.width}x{image.height} is smaller than one {self.patch_size}-px patch.")
            patches.append(self.patchify(image))
            grids.append([1, image.height // self.patch_size, image.width // self.patch_size])
        data = {"pixel_values": torch.cat(patches), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def generation_grid(self, height: int, width: int, pixels_per_token: int = 32) -> tuple:
        """Token grid (h, w) for an image generated at `height` x `width` px (1024 x 1024 -> 32 x 32 tokens)."""
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < pixels_per_token:
                raise ValueError(f"`{name}` must be an integer >= {pixels_per_token} px, got {value!r}.")
            if value % pixels_per_token:
                raise ValueError(f"`{name}` ({value}) must be a multiple of {pixels_per_token} px.")
        return height // pixels_per_token, width // pixels_per_token


__all__ = ["LLaDA2UniImageProcessor", "load_image", "to_rgb"]
