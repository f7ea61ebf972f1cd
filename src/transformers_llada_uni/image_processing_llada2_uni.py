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
import copy
import io
import math
import os
from typing import Optional

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

logger = logging.get_logger(__name__)

MODES = ("understanding", "edit", "none")
DEFAULT_MIN_PIXELS = 128 * 128
DEFAULT_MAX_PIXELS = 800 * 800


class LLaDA2UniImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    mode (`str`, *optional*): input path, "understanding", "edit" or "none" (see the module docstring).
    edit_crop (`str`, *optional*): "center" or "cover" (edit path).
    min_pixels / max_pixels (`int`, *optional*): the understanding path's area bounds (also `size["shortest_edge"]`
        / `size["longest_edge"]`, transformers' spelling of the same two numbers).
    multi_image_max_pixels (`int`, *optional*): the area bound when several images are given.
    resize_factor (`int`, *optional*): side granularity of the understanding / edit paths.
    edit_max_cells (`int`, *optional*), edit_max_ratio (`float`, *optional*): the edit path's candidate crops.
    max_grid_side (`int`, *optional*): the largest grid side (tokens) the caller's tokenizer can write.
    patch_size / temporal_patch_size / merge_size (`int`, *optional*): set when the processor is created (they
        follow the vision encoder), not per call.
    """

    mode: str | None
    edit_crop: str | None
    min_pixels: int | None
    max_pixels: int | None
    multi_image_max_pixels: int | None
    resize_factor: int | None
    edit_max_cells: int | None
    edit_max_ratio: float | None
    max_grid_side: int | None
    patch_size: int | None
    temporal_patch_size: int | None
    merge_size: int | None


# Settings `preprocess` takes per call: each one means what the attribute of the same name means.
_CALL_SETTINGS = ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "size",
                  "min_pixels", "max_pixels", "multi_image_max_pixels", "mode", "edit_crop", "resize_factor",
                  "edit_max_cells", "edit_max_ratio")
# transformers' image arguments this processor has no use for: refused when set, rather than silently ignored.
_UNUSED_IMAGE_KWARGS = ("default_to_square", "crop_size", "resample", "do_pad", "pad_size", "do_center_crop",
                        "data_format", "disable_grouping", "image_seq_length", "patch_size", "temporal_patch_size",
                        "merge_size")


def pixel_bounds(size=None, min_pixels=None, max_pixels=None, base=None) -> dict:
    """`size` as {"shortest_edge": min area, "longest_edge": max area} (pixels), from transformers' `size` dict (those
    keys, or "min_pixels" / "max_pixels") and / or the two bounds given on their own (which win); missing values come
    from `base`. Refuses anything else by name."""
    bounds = dict(base or {"shortest_edge": DEFAULT_MIN_PIXELS, "longest_edge": DEFAULT_MAX_PIXELS})
    if size is not None:
        if not isinstance(size, dict) or not size:
            raise ValueError(f"`size` must be a dict {{'shortest_edge': min pixels, 'longest_edge': max pixels}} "
                             f"(image areas), got {size!r}.")
        aliases = {"shortest_edge": "shortest_edge", "longest_edge": "longest_edge", "min_pixels": "shortest_edge",
                   "max_pixels": "longest_edge"}
        unknown = sorted(set(size) - set(aliases))
        if unknown:
            raise ValueError(f"`size` has keys {unknown}; this image processor bounds the image area with "
                             "'shortest_edge' (min pixels) and 'longest_edge' (max pixels).")
        for key, value in size.items():
            bounds[aliases[key]] = value
    if min_pixels is not None:
        bounds["shortest_edge"] = min_pixels
    if max_pixels is not None:
        bounds["longest_edge"] = max_pixels
    for key, name in (("shortest_edge", "min_pixels"), ("longest_edge", "max_pixels")):
        value = bounds[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` (size['{key}']) must be a positive number of pixels, got {value!r}.")
    if bounds["shortest_edge"] > bounds["longest_edge"]:
        raise ValueError(f"`min_pixels` ({bounds['shortest_edge']}) is larger than `max_pixels` "
                         f"({bounds['longest_edge']}).")
    return bounds


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


def channels_last(array, input_data_format: Optional[str] = None):
    """An image array / tensor as [height, width, channels]. [channels, height, width] (torch's order) is recognised
    by 3 or 4 leading channels when the last axis is not 3 or 4; `input_data_format` ("channels_first" /
    "channels_last") settles the order where both readings fit."""
    shape = tuple(array.shape)
    if input_data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(f"`input_data_format` must be 'channels_first' or 'channels_last', got "
                         f"{input_data_format!r}.")
    first = len(shape) == 3 and shape[0] in (3, 4)
    if input_data_format == "channels_first" or (input_data_format is None and first and shape[-1] not in (3, 4)):
        return array.permute(1, 2, 0) if isinstance(array, torch.Tensor) else np.moveaxis(array, 0, -1)
    return array


def to_rgb(image, name: str = "images", input_data_format: Optional[str] = None):
    """A PIL RGB image from a PIL image, a path / URL (see `load_image`) or an HxWx3 / HxWx4 uint8 (or uint16)
    array or tensor (3xHxW / 4xHxW, channels first, too). Every input takes this one path: EXIF orientation is
    applied, 16-bit pixels are scaled to 8 bits, and transparency (an alpha band or a `transparency` entry) is
    composited onto white."""
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        image = load_image(image, name)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        image = channels_last(image, input_data_format)
        if image.ndim != 3 or image.shape[-1] not in (3, 4) or image.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"`{name}` arrays must be uint8 (or uint16) with shape [height, width, 3 or 4] (RGB / RGBA, or "
                f"[3 or 4, height, width]); got "
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
        size (`dict`, defaults to `{"shortest_edge": 128 * 128, "longest_edge": 800 * 800}`): the understanding
            path's bounds on the image AREA in pixels (transformers' spelling for Qwen2-VL-style resizing);
            `min_pixels` / `max_pixels` are the same two numbers under their own names (given, they win; both
            remain readable and settable as attributes). multi_image_max_pixels (defaults to 448^2)
        edit_max_cells (`int`, defaults to 256), edit_max_ratio (`float`, defaults to 4.0)
        edit_crop (`str`, defaults to "center"): "center" (faithful) or "cover".

    Generation settings (output size, pixels per token, guidance scales) live in the model's `generation_config.json`
    (`LLaDA2GenerationConfig`); the keys earlier releases of this project stored here are ignored when read.
    """

    model_input_names = ["pixel_values", "image_grid_thw"]
    valid_kwargs = LLaDA2UniImageProcessorKwargs

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
        size: Optional[dict] = None,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
        multi_image_max_pixels: int = 448 * 448,
        edit_max_cells: int = 256,
        edit_max_ratio: float = 4.0,
        edit_crop: str = "center",
        **kwargs,
    ):
        for legacy in ("resample", "image_processor_type", "processor_class", *_MOVED_TO_GENERATION_CONFIG):
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
        self.size = pixel_bounds(size, min_pixels, max_pixels)
        self.multi_image_max_pixels = multi_image_max_pixels
        self.edit_max_cells = edit_max_cells
        self.edit_max_ratio = edit_max_ratio
        self.edit_crop = self._check_edit_crop(edit_crop)

    # The two area bounds live in `size` (what is saved); these names read and write the same numbers.
    @property
    def min_pixels(self) -> int:
        return self.size["shortest_edge"]

    @min_pixels.setter
    def min_pixels(self, value: int):
        self.size = pixel_bounds(min_pixels=value, base=self.size)

    @property
    def max_pixels(self) -> int:
        return self.size["longest_edge"]

    @max_pixels.setter
    def max_pixels(self, value: int):
        self.size = pixel_bounds(max_pixels=value, base=self.size)

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
        input_data_format: Optional[str] = None,
        **kwargs,
    ) -> BatchFeature:
        """`images`: one image or a list. Returns `pixel_values` and `image_grid_thw` (see the class docstring).
        `max_grid_side`: the largest grid side (tokens) the caller's tokenizer can write (see `fit`).
        `input_data_format`: "channels_first" / "channels_last" for arrays whose channel axis is ambiguous.
        Any setting named like an attribute (`do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`,
        `image_std`, `size` / `min_pixels` / `max_pixels`, `resize_factor`, `edit_max_cells`, ...) applies to this
        call only."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("`images` is empty.")
        settings = {key: value for key, value in (("mode", mode), ("do_resize", do_resize), ("edit_crop", edit_crop))
                    if value is not None}
        settings.update({key: kwargs.pop(key) for key in _CALL_SETTINGS if key in kwargs})
        proc = self._for_call({key: value for key, value in settings.items() if value is not None})
        if kwargs.pop("do_convert_rgb", None) is False:
            raise ValueError("`do_convert_rgb=False` is not supported: every image is made RGB (transparency "
                             "composited onto white), as the vision tokenizer expects.")
        kwargs.pop("device", None)  # where a torchvision backend would compute; this processor works in PIL
        unused = sorted(key for key in _UNUSED_IMAGE_KWARGS if kwargs.pop(key, None) is not None)
        if unused or kwargs:
            raise ValueError(f"`{type(self).__name__}` does not take {unused + sorted(kwargs)} at call time; "
                             f"settings it takes per call: {list(_CALL_SETTINGS)}, `max_grid_side`, "
                             "`input_data_format`, `return_tensors`.")
        mode = proc.mode if proc.do_resize else "none"
        patches, grids = [], []
        for image in images:
            image = proc.fit(to_rgb(image, input_data_format=input_data_format), mode, num_images=len(images),
                             max_grid_side=max_grid_side)
            if image.width < proc.patch_size or image.height < proc.patch_size:
                raise ValueError(f"`images`: {image.width}x{image.height} is smaller than one {proc.patch_size}-px patch.")
            patches.append(proc.patchify(image))
            grids.append([1, image.height // proc.patch_size, image.width // proc.patch_size])
        data = {"pixel_values": torch.cat(patches), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _for_call(self, settings: dict):
        """This processor, or a shallow copy of it with one call's settings applied (each checked like at init)."""
        if not settings:
            return self
        proc = copy.copy(self)
        proc.size = pixel_bounds(settings.pop("size", None), settings.pop("min_pixels", None),
                                 settings.pop("max_pixels", None), base=self.size)
        if "mode" in settings:
            self._check_mode(settings["mode"])
        if "edit_crop" in settings:
            self._check_edit_crop(settings["edit_crop"])
        for key in ("image_mean", "image_std"):
            if key in settings:
                value = settings[key]
                settings[key] = [float(value)] * 3 if isinstance(value, (int, float)) else list(value)
                if len(settings[key]) != 3:
                    raise ValueError(f"`{key}` must have one value per RGB channel (3), got {value!r}.")
        for key, value in settings.items():
            setattr(proc, key, value)
        return proc

    def generation_grid(self, height: int, width: int, pixels_per_token: int = 32) -> tuple:
        """Token grid (h, w) for an image generated at `height` x `width` px (1024 x 1024 -> 32 x 32 tokens)."""
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < pixels_per_token:
                raise ValueError(f"`{name}` must be an integer >= {pixels_per_token} px, got {value!r}.")
            if value % pixels_per_token:
                raise ValueError(f"`{name}` ({value}) must be a multiple of {pixels_per_token} px.")
        return height // pixels_per_token, width // pixels_per_token


__all__ = ["LLaDA2UniImageProcessor", "load_image", "to_rgb"]
