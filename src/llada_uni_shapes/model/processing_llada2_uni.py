"""Processor for LLaDA2.0-Uni: the prompt templates of the original around the tokenizer and the SigLIP-VQ image
processor.

The templates (with the layout of image blocks and output headers), special-token strings, default system prompts
and the default chat template live in `prompting_llada2_uni` (re-exported here), together with the pure helpers
(input normalisation, splitting generated ids); this module holds `LLaDA2UniProcessor`, which reads the special ids
from the tokenizer, preprocesses images and writes the prompts as ids.

Text is tokenized by the tokenizer without added special tokens; every image block and header is written as ids.
Text stretches always end at a special token (`<|image|>`, `<boi>`, `<|/image|>`, `<role>`), which tokenizers split
off first, so this equals tokenizing the whole prompt string at once. User text is tokenized on its own with special-
token strings read as plain text (`UserText`), so a user cannot write a control token.
"""

import os
import re
from typing import Optional, Union

import torch
from transformers import BatchFeature
from transformers.image_utils import ImageInput
from transformers.processing_utils import (
    AudioKwargs,
    ProcessingKwargs,
    ProcessorMixin,
    TextKwargs,
    Unpack,
    VideosKwargs,
)
from transformers.tokenization_utils_base import TextInput
from transformers.utils import logging

from .image_processing_llada2_uni import LLaDA2UniImageProcessorKwargs, channels_last, load_image
from .prompting_llada2_uni import (
    ASSISTANT_TURN,
    BOI,
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPTS,
    END_OF_TEXT,
    IMAGE_END,
    IMAGE_START,
    MASK,
    MODES,
    RESERVED_PATTERN,
    TEXT_ROLES,
    UNCONDITION,
    UserText,
    code_grid,
    flat_ids,
    is_code_item,
    is_image_item,
    per_sample,
    reasoning_ids,
    split_ids,
    system_turn,
    word_at,
)

_PLAIN_WORD = re.compile(r"^\w+$")
logger = logging.get_logger(__name__)

# transformers' text arguments that mean nothing for a prompt written from templates: refused when set to anything
# but their off value (verbose and sanitize_control_tokens are accepted and have no effect).
_UNUSED_TEXT_KWARGS = ("text_pair", "text_target", "text_pair_target", "stride", "is_split_into_words",
                       "return_token_type_ids", "return_overflowing_tokens", "return_special_tokens_mask",
                       "return_length", "return_mm_token_type_ids")
# Character offsets into `text` exist only where `text` is the whole prompt (mode "raw").
_OFFSET_KWARGS = ("return_offsets_mapping", "return_text_replacement_offsets")
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length", False: None, "do_not_pad": None}
_TRUNCATION = {True: True, "longest_first": True, "only_first": True, False: False, "do_not_truncate": False}


class LLaDA2UniProcessorKwargs(ProcessingKwargs, total=False):
    r"""
    mode (`str`, *optional*, defaults to "understanding"): the prompt template: "understanding", "t2i", "edit",
        "interleaved" or "raw" (the text is the whole prompt).
    image_mode (`str`, *optional*): the image processor's path for `images` ("understanding", "edit" or "none");
        by default "edit" for mode "edit", else "understanding".
    thinking (`bool`, *optional*, defaults to False): "t2i" thinking mode (phase-1 prompt without the image header).
    return_uncond (`bool`, *optional*, defaults to True): "t2i" / "edit" / "interleaved": also return the
        unconditional rows (`uncond_input_ids` / `uncond_attention_mask`).
    image_cfg (`bool`, *optional*, defaults to False): "edit": also return `uncond_image_input_ids` /
        `uncond_image_attention_mask` (source image blocks replaced by a bare `<|image|>`).
    add_bos (`bool`, *optional*, defaults to False): prepend the tokenizer's BOS (the templates have none);
        `add_special_tokens=True` means the same.
    """

    images_kwargs: LLaDA2UniImageProcessorKwargs
    mode: str | None
    image_mode: str | None
    thinking: bool | None
    return_uncond: bool | None
    image_cfg: bool | None
    add_bos: bool | None


class LLaDA2UniProcessor(ProcessorMixin):
    r"""
    Builds LLaDA2.0-Uni prompts (understanding, text-to-image, editing, chat) from text and images, and splits
    generated sequences back into text and image-token grids.

    Args:
        image_processor (`LLaDA2UniImageProcessor`): turns images into `pixel_values` + `image_grid_thw`.
        tokenizer (`PreTrainedTokenizerFast`): the LLaDA2 tokenizer. It must hold `<|image|>`, `<|/image|>`, `<boi>`
            and `<|reserved_token_0|>` ...; `<uncondition>` is needed for unconditional (CFG) prompts. Special ids are
            read from it by token string. Its padding side is set to "left".
        chat_template (`str`, *optional*): Jinja chat template; defaults to `DEFAULT_CHAT_TEMPLATE`.
        image_token_offset (`int`, *optional*): vocabulary id of VQ code 0 (157184 in the release). Needed to write
            precomputed `image_tokens` and by `split_generation`.
        codebook_size (`int`, defaults to 16384): number of VQ codes; codes must lie in [0, codebook_size).
        system_prompts (`dict`, *optional*): overrides of the system prompts, keys "understanding", "t2i",
            "t2i_thinking", "edit", "interleaved" (defaults in `DEFAULT_SYSTEM_PROMPTS`; the understanding and
            interleaved ones are open points of the reference).
    """

    image_token = "<image>"
    valid_processor_kwargs = LLaDA2UniProcessorKwargs
    # Defaults of the call's settings (transformers reads a processor's defaults from its class attributes).
    text_kwargs = {"padding": "longest", "return_tensors": "pt"}
    mode = "understanding"
    image_mode = None
    thinking = False
    return_uncond = True
    image_cfg = False
    add_bos = False

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_token_offset: Optional[int] = None,
        codebook_size: int = 16384,
        system_prompts: Optional[dict] = None,
        **kwargs,
    ):
        if tokenizer is None or image_processor is None:
            raise ValueError("`LLaDA2UniProcessor` needs both a `tokenizer` and an `image_processor`.")
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        if image_token_offset is not None and (not isinstance(image_token_offset, int) or image_token_offset <= 0):
            raise ValueError(f"`image_token_offset` must be a positive integer, got {image_token_offset!r}.")
        if not isinstance(codebook_size, int) or codebook_size <= 0:
            raise ValueError(f"`codebook_size` must be a positive integer, got {codebook_size!r}.")
        system_prompts = dict(system_prompts or {})
        unknown = set(system_prompts) - set(DEFAULT_SYSTEM_PROMPTS)
        if unknown:
            raise ValueError(
                f"`system_prompts` has unknown keys {sorted(unknown)}; valid keys: {list(DEFAULT_SYSTEM_PROMPTS)}."
            )
        self.image_token_offset = image_token_offset
        self.codebook_size = codebook_size
        self.system_prompts = system_prompts
        self.tokenizer.padding_side = "left"
        self._read_special_ids()

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`ProcessorMixin.save_pretrained`, without leaving the `auto_map` it writes into the files behind on this
        processor or its image processor (a reloaded processor has none, and `to_dict()` must round-trip)."""
        fresh = [part for part in (self, self.image_processor) if "auto_map" not in part.__dict__]
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            for part in fresh:
                part.__dict__.pop("auto_map", None)

    # ------------------------------------------------------------------ special ids

    def _read_special_ids(self):
        vocab = self.tokenizer.get_vocab()
        missing = [token for token in (IMAGE_START, IMAGE_END, BOI, "<|reserved_token_0|>") if token not in vocab]
        if missing:
            raise ValueError(
                f"the `tokenizer` lacks the LLaDA2.0-Uni special token(s) {missing}; load the tokenizer that ships "
                "with the checkpoint."
            )
        reserved = {}
        for token, index in vocab.items():
            match = RESERVED_PATTERN.match(token)
            if match:
                reserved[int(match.group(1))] = index
        count = 0
        while count in reserved:
            count += 1
        self._reserved_ids = [reserved[n] for n in range(count)]
        self._reserved_values = {index: n for n, index in enumerate(self._reserved_ids)}
        self.image_start_token_id = vocab[IMAGE_START]
        self.image_end_token_id = vocab[IMAGE_END]
        self.boi_token_id = vocab[BOI]
        self.uncondition_token_id = vocab.get(UNCONDITION)
        self.mask_token_id = vocab.get(MASK)
        # Control ids that only an added token's string can produce: special tokens and added tokens that are not
        # plain words (`<role>`, `<|reserved_token_3|>`, ...). Words added to the vocabulary (`tokenizer.add_tokens`)
        # are text a user may write; the unknown token comes out of plain text too.
        self._added_ids = {index for index, token in self.tokenizer.added_tokens_decoder.items()
                           if token.special or not _PLAIN_WORD.match(token.content)} - {self.tokenizer.unk_token_id}
        self.eos_token_id = vocab.get(END_OF_TEXT, self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id if self.eos_token_id is not None else 0)

    @property
    def num_reserved_tokens(self) -> int:
        """How many consecutive `<|reserved_token_N|>` (N = 0, 1, ...) the tokenizer has: the largest grid side + 1."""
        return len(self._reserved_ids)

    def reserved_token_id(self, value: int, name: str = "value", side: Optional[str] = None) -> int:
        """Id of `<|reserved_token_{value}|>`, which writes a grid side; ValueError naming `name` if unavailable."""
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(self._reserved_ids):
            label = f"`{name}`" if side is None else f"`{name}`: a grid {side} of"
            raise ValueError(
                f"{label} {value!r} tokens cannot be written: the tokenizer has <|reserved_token_N|> only for "
                f"N in [0, {len(self._reserved_ids) - 1}]."
            )
        return self._reserved_ids[value]

    def image_header_ids(self, height: int, width: int, source: Optional[str] = None) -> list:
        """`<|image|><|reserved_token_h|><|reserved_token_w|><boi>` as ids (`height` x `width` tokens). `source` names
        the argument the grid came from in errors (default: `height` / `width`)."""
        if source is None:
            sides = self.reserved_token_id(height, "height"), self.reserved_token_id(width, "width")
        else:
            sides = self.reserved_token_id(height, source, "height"), self.reserved_token_id(width, source, "width")
        return [self.image_start_token_id, *sides, self.boi_token_id]

    def _system_prompt(self, key: str, override: Optional[str]) -> str:
        if override is not None:
            if not isinstance(override, str):
                raise ValueError(f"`system_prompt` must be a string, got {type(override).__name__}.")
            return override
        return self.system_prompts.get(key, DEFAULT_SYSTEM_PROMPTS[key])

    def _require_uncondition(self):
        if self.uncondition_token_id is None:
            raise ValueError(
                f"the `tokenizer` has no {UNCONDITION} token, which unconditional (CFG) prompts need; pass "
                "`return_uncond=False` or use the checkpoint's tokenizer."
            )

    def _require_offset(self, what: str):
        if self.image_token_offset is None:
            raise ValueError(
                f"{what} needs `image_token_offset` (the vocabulary id of VQ code 0); set it when creating the "
                "processor (it is saved in processor_config.json)."
            )

    # ------------------------------------------------------------------ grids and images

    def generation_grid(self, height=None, width=None, grid=None) -> tuple:
        """Output token grid: `grid` = (h, w) in tokens, or `height` / `width` in pixels (1024 px -> 32 tokens)."""
        if grid is not None:
            if height is not None or width is not None:
                raise ValueError("give either `grid` (tokens) or `height` / `width` (pixels), not both.")
            if not isinstance(grid, (tuple, list)) or len(grid) != 2:
                raise ValueError(f"`grid` must be a pair (height, width) in tokens, got {grid!r}.")
            h, w = grid
            for name, value in (("height", h), ("width", w)):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ValueError(f"`grid` {name} must be a positive number of tokens, got {value!r}.")
        else:
            h, w = self.image_processor.generation_grid(1024 if height is None else height,
                                                        1024 if width is None else width)
        self.reserved_token_id(h, "height")
        self.reserved_token_id(w, "width")
        return h, w

    def _check_image(self, image, name: str = "images"):
        """Read a path / URL with the image processor's `load_image` (the one loader, used by the CLI too; offline
        refuses URLs) and check the size before any work; pixels are converted later, by `to_rgb`."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            image = load_image(image, name)
        if isinstance(image, Image.Image):
            height, width = image.height, image.width
        elif hasattr(image, "shape"):
            shape = tuple(channels_last(image).shape) if len(image.shape) == 3 else tuple(image.shape)
            if len(shape) != 3 or shape[-1] not in (3, 4):
                raise ValueError(
                    f"`{name}` arrays must have shape [height, width, 3] (RGB) or [height, width, 4] (RGBA) (or the "
                    f"channels first), got {list(image.shape)}."
                )
            height, width = shape[0], shape[1]
        else:
            raise ValueError(f"`{name}` must hold PIL images, arrays or paths, got {type(image).__name__}.")
        patch = self.image_processor.patch_size
        if height <= 0 or width <= 0:
            raise ValueError(f"`{name}` has an empty image ({width}x{height}).")
        if height < patch or width < patch:
            raise ValueError(f"`{name}`: a {width}x{height} image is smaller than one {patch}-px patch.")
        return image

    # ------------------------------------------------------------------ token assembly

    def _tokenize_parts(self, parts: list, unknown: Optional[dict] = None) -> list:
        """Concatenate parts: str -> tokenized (adjacent template strings merged first), list[int] -> ids as they are,
        `UserText` -> tokenized on its own with special-token strings read as plain text. Words of user text that the
        tokenizer maps to its unknown token are collected in `unknown`, for one warning per call (mode "raw", a prompt
        the caller rendered, is written by `_raw_row`)."""
        ids, pending = [], []
        for part in parts + [None]:
            if isinstance(part, str) and not isinstance(part, UserText):
                pending.append(part)
                continue
            if pending:
                text = "".join(pending)
                if text:
                    ids.extend(self._encode(text, user=False, unknown=None)[0])
                pending = []
            if isinstance(part, UserText):
                ids.extend(self._encode(part, user=True, unknown=unknown)[0])
            elif part is not None:
                ids.extend(part)
        return ids

    def _encode(self, text: str, user: bool, unknown: Optional[dict]) -> tuple:
        """Token ids of `text` and their (start, end) character spans in it (None where the tokenizer gives no
        offsets: python tokenizers, and user text re-encoded without added tokens). User text never yields an added
        token's id: `<|mask|>`, `<role>` or `<boi>` typed by a user is text, not a control token. It is tokenized on
        its own, which gives the same ids as tokenizing it inside the template because every template string next to
        it ends or starts at a special token, where tokenizers cut the text first."""
        options = {"add_special_tokens": False, "split_special_tokens": user}
        try:
            encoded = self.tokenizer(text, return_offsets_mapping=True, **options)
            offsets = encoded["offset_mapping"]
        except NotImplementedError:  # python tokenizers give no offsets: unknown words are counted, not named
            encoded, offsets = self.tokenizer(text, **options), None
        ids = list(encoded["input_ids"])
        plain = getattr(self.tokenizer, "_encode_without_added_tokens", None)
        if user and plain is not None and self._added_ids.intersection(ids):
            # A non-special added token (split_special_tokens skips special ones only): encode without added tokens.
            ids, offsets = list(plain(text)), None
        unk = self.tokenizer.unk_token_id
        if unknown is not None and unk is not None:
            for index, token in enumerate(ids):
                if token == unk:
                    unknown[word_at(text, offsets[index]) if offsets is not None else "a word"] = None
        return ids, (None if offsets is None else [tuple(span) for span in offsets])

    def _raw_row(self, message: str, blocks: list, name: str, unknown: dict, with_offsets: bool) -> tuple:
        """Mode "raw": the ids of a rendered prompt, its `<image>` markers replaced by the sample's image blocks (ids,
        never tokenized from text), and, with `with_offsets`, each id's (start, end) character span in `message`:
        a text token's span as the tokenizer gives it, every id of an image block the span of its marker."""
        parts = self._message_parts(message, blocks, name, markers_required=True, user=False)
        ids, spans, cursor, marker = [], [], 0, len(self.image_token)
        for index, part in enumerate(parts):
            if index % 2:  # an image block, written where its marker was
                ids.extend(part)
                spans.extend([(cursor, cursor + marker)] * len(part))
                cursor += marker
                continue
            if part:
                piece_ids, piece_spans = self._encode(part, user=False, unknown=unknown)
                if with_offsets and piece_spans is None:
                    raise ValueError("`return_offsets_mapping` (and `return_assistant_tokens_mask`) needs a fast "
                                     "tokenizer (one backed by `tokenizers`), which gives character offsets.")
                ids.extend(piece_ids)
                if with_offsets:
                    spans.extend((cursor + start, cursor + end) for start, end in piece_spans)
            cursor += len(part)
        return ids, (spans if with_offsets else None)

    def _image_block(self, image_info: dict) -> list:
        """One input image block as ids (placeholders for pixels, vocabulary ids for precomputed codes)."""
        h, w = image_info["grid"]
        header = self.image_header_ids(h, w, source=image_info["name"])
        if image_info["codes"] is None:
            content = [self.image_start_token_id] * (h * w)
        else:
            content = [self.image_token_offset + code for code in image_info["codes"]]
        return header + content + [self.image_end_token_id]

    def _message_parts(self, message: str, blocks: list, name: str, markers_required: bool = False,
                       user: bool = True) -> list:
        """The message with image blocks at its `<image>` markers, or all blocks at its start when it has none. With
        `user`, its text pieces are `UserText` (no control tokens can come out of them)."""
        pieces = [UserText(piece) if user else piece for piece in message.split(self.image_token)]
        markers = len(pieces) - 1
        if markers == 0 and not markers_required:
            return list(blocks) + ([pieces[0]] if message else [])
        if markers != len(blocks):
            raise ValueError(
                f"`{name}` has {markers} {self.image_token} marker(s) but {len(blocks)} image(s) were given for it."
            )
        parts = [pieces[0]]
        for block, piece in zip(blocks, pieces[1:]):
            parts.extend([block, piece])
        return parts

    def _layout(self, rows: dict, text_kwargs: dict, offsets: Optional[list] = None) -> dict:
        """Truncate and pad each group of rows (`input_ids`, `uncond_input_ids`, ...) as the text arguments say, and
        add the attention masks: the tokenizer's own conventions (`padding`, `truncation`, `max_length`,
        `pad_to_multiple_of`, `padding_side`, `return_attention_mask`), applied to ids written from templates.
        `offsets` (one list of (start, end) spans per `input_ids` row) are cut and padded the same way, padding with
        (0, 0), and returned as `offset_mapping`."""
        padding_value = text_kwargs.get("padding")
        if padding_value is None:
            padding_value = False
        if isinstance(padding_value, bool) or isinstance(padding_value, str):
            padding = _PADDING.get(str(padding_value) if not isinstance(padding_value, bool) else padding_value, "?")
        else:
            padding = "?"
        if padding == "?":
            raise ValueError(f"`padding` must be True, False, 'longest', 'max_length' or 'do_not_pad', got "
                             f"{padding_value!r}.")
        truncation_value = text_kwargs.get("truncation")
        truncation = _TRUNCATION.get(truncation_value if truncation_value is not None else False, "?")
        if truncation == "?" or (isinstance(truncation_value, str) and truncation_value not in _TRUNCATION):
            raise ValueError(f"`truncation` must be True, False, 'longest_first', 'only_first' or 'do_not_truncate', "
                             f"got {truncation_value!r}.")
        max_length = text_kwargs.get("max_length")
        if (padding == "max_length" or truncation) and max_length is None:
            raise ValueError(f"`padding='max_length'` and `truncation` need `max_length` (a number of tokens).")
        multiple = text_kwargs.get("pad_to_multiple_of")
        side = text_kwargs.get("padding_side") or self.tokenizer.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"`padding_side` must be 'left' or 'right', got {side!r}.")
        with_mask = text_kwargs.get("return_attention_mask")
        tensors = text_kwargs.get("return_tensors")
        image_ids = {self.image_start_token_id, self.image_end_token_id, self.boi_token_id}
        offset = self.image_token_offset

        def in_image(token):
            return token in image_ids or (offset is not None and offset <= token < offset + self.codebook_size)

        def keep(row):  # the kept slice of a row under truncation
            if not truncation or len(row) <= max_length:
                return slice(None)
            return slice(0, max_length) if self.tokenizer.truncation_side == "right" else slice(len(row) - max_length,
                                                                                                None)

        data = {}
        for key, group in rows.items():
            if truncation:
                kept = []
                for index, row in enumerate(group):
                    cut = row[keep(row)]
                    if sum(map(in_image, cut)) != sum(map(in_image, row)):
                        raise ValueError(f"`max_length={max_length}` with `truncation` would cut into an image block "
                                         f"of row {index} ({len(row)} tokens); raise `max_length` or pass fewer images.")
                    kept.append(cut)
                if key == "input_ids" and offsets is not None:
                    offsets = [spans[keep(row)] for spans, row in zip(offsets, group)]
                group = kept
            longest = max(len(row) for row in group)
            target = None
            if padding == "longest":
                target = longest
            elif padding == "max_length":
                target = max(max_length, longest)
            if target is not None and multiple:
                target = -(-target // multiple) * multiple
            if target is None and tensors is not None and any(len(row) != longest for row in group):
                raise ValueError(f"the rows of `{key}` have different lengths and `padding` is off; pass "
                                 "`padding=True` (or `return_tensors=None` for lists).")
            ids, masks = [], []
            for row in group:
                fill = (target or len(row)) - len(row)
                if side == "left":
                    ids.append([self.pad_token_id] * fill + list(row))
                    masks.append([0] * fill + [1] * len(row))
                else:
                    ids.append(list(row) + [self.pad_token_id] * fill)
                    masks.append([1] * len(row) + [0] * fill)
            data[key] = ids
            if with_mask is not False:
                data[key.replace("input_ids", "attention_mask")] = masks
            if key == "input_ids" and offsets is not None:
                padded = []
                for spans in offsets:
                    fill = [(0, 0)] * ((target or len(spans)) - len(spans))
                    padded.append(fill + list(spans) if side == "left" else list(spans) + fill)
                data["offset_mapping"] = padded
        return data

    def _check_call_kwargs(self, kwargs: dict):
        """Refuse argument names that neither this processor nor its tokenizer / image processor know (transformers
        would only warn and drop them)."""
        known = set(LLaDA2UniProcessorKwargs.__annotations__) | {"common_kwargs"}
        # Video and audio settings (chat templates pass them along) have nothing to apply to: videos and audio
        # themselves are refused.
        for typed in (TextKwargs, LLaDA2UniImageProcessorKwargs, getattr(self.image_processor, "valid_kwargs", dict),
                      VideosKwargs, AudioKwargs):
            known |= set(getattr(typed, "__annotations__", {}))
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unexpected argument(s) {unknown} for `LLaDA2UniProcessor.__call__`.")

    # ------------------------------------------------------------------ main entry point

    def __call__(
        self,
        *,
        images: Optional[ImageInput] = None,
        text: Optional[Union[TextInput, list[TextInput]]] = None,
        image_tokens=None,
        system_prompt: Optional[str] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        grid: Optional[tuple] = None,
        **kwargs: Unpack[LLaDA2UniProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Build model inputs. All arguments are keyword-only.

        Args:
            text (`str` or `list[str]`): per sample, the user message: the question ("understanding"), the image
                description ("t2i") or the edit instruction ("edit"); with `mode="raw"` a complete prompt (e.g. from
                `apply_chat_template(..., tokenize=False)`). `<image>` markers place the sample's images; without
                markers the images go at the start of the message, in order (mode "raw" requires markers).
            images (*optional*): PIL images, uint8 arrays / tensors ([H, W, 3|4] or [3|4, H, W]) or paths. One image or
                a list for one text; a list with one entry (an image, a list of images or None) per text for a batch.
            image_tokens (*optional*): instead of `images`, precomputed offset-free VQ codes, nested the same way;
                each entry a [h, w] code grid, a (h, w, codes) triple or a dict with `token_ids` and `h` / `w`
                (`height` / `width`). The vocabulary ids `image_token_offset + code` are written directly.
            system_prompt (`str`, *optional*): replaces the mode's system prompt for this call.
            height / width (`int`, *optional*): output size in pixels for "t2i" (default 1024 x 1024, mapped by
                `image_processor.generation_grid`, 32 px per token) or to override the edit output grid.
            grid (`tuple`, *optional*): the output grid (h, w) in tokens instead of `height` / `width`.
            **kwargs: transformers' processing arguments (`LLaDA2UniProcessorKwargs`), flat or grouped in
                `text_kwargs` / `images_kwargs` / `common_kwargs`:
                - the prompt settings `mode`, `image_mode`, `thinking`, `return_uncond`, `image_cfg`, `add_bos`
                  (see `LLaDA2UniProcessorKwargs`; defaults are this class's attributes of the same names);
                - text: `padding` (defaults to "longest": rows are padded with the pad id on the tokenizer's padding
                  side, left), `truncation`, `max_length`, `pad_to_multiple_of`, `padding_side`,
                  `return_attention_mask`, `return_tensors` (defaults to "pt"; "np" or None for lists); with mode
                  "raw" also `return_offsets_mapping` (`offset_mapping`: each id's (start, end) character span in
                  `text`; the ids of an image block share its `<image>` marker's span; BOS and padding get (0, 0))
                  and `return_text_replacement_offsets` (empty lists: no text is rewritten), which
                  `apply_chat_template(..., return_assistant_tokens_mask=True)` uses;
                - images: any setting `image_processor.preprocess` takes (`edit_crop`, `size`, `do_rescale`, ...).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask`, `pixel_values` + `image_grid_thw` when pixel images were
            given, and the unconditional rows described above.
        """
        for key in ("videos", "audio"):
            if kwargs.pop(key, None) is not None:
                raise ValueError(f"`{key}` are not supported by LLaDA2.0-Uni.")
        self._check_call_kwargs(kwargs)
        merged = self._merge_kwargs(LLaDA2UniProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs,
                                    **kwargs)
        setting = {key: merged.get(key) if merged.get(key) is not None else getattr(self, key)
                   for key in ("mode", "image_mode", "thinking", "return_uncond", "image_cfg", "add_bos")}
        mode, image_mode, thinking = setting["mode"], setting["image_mode"], setting["thinking"]
        return_uncond, image_cfg, add_bos = setting["return_uncond"], setting["image_cfg"], setting["add_bos"]
        text_kwargs, images_kwargs = merged["text_kwargs"], dict(merged["images_kwargs"])
        if text_kwargs.pop("add_special_tokens", False):
            add_bos = True
        text_kwargs.pop("verbose", None)
        text_kwargs.pop("sanitize_control_tokens", None)
        for key in ("return_mm_token_type_ids", "return_text_replacement_offsets"):
            if merged.get(key):
                text_kwargs[key] = True
        wanted = {key: bool(text_kwargs.pop(key, None)) for key in _OFFSET_KWARGS}
        if any(wanted.values()) and mode != "raw":
            asked = [key for key, value in wanted.items() if value]
            raise ValueError(f"`{asked[0]}` needs mode 'raw' (the text is the whole prompt, e.g. a rendered chat "
                             f"template), not {mode!r}: the other modes' template text is not in `text`.")
        with_offsets, with_replacements = wanted["return_offsets_mapping"], wanted["return_text_replacement_offsets"]
        unused = sorted(key for key in _UNUSED_TEXT_KWARGS if text_kwargs.get(key) not in (None, False, 0))
        if unused:
            raise ValueError(f"{unused} are not supported by `LLaDA2UniProcessor` (its prompts are written from "
                             "templates, one sequence per text).")
        if mode == "understanding" and text is None and images is None and image_tokens is None:
            raise ValueError("`LLaDA2UniProcessor` needs `text`, `images` or `image_tokens`; none was given.")
        return_tensors = text_kwargs.get("return_tensors")
        images_kwargs.pop("return_tensors", None)
        if images_kwargs.get("mode") is not None:
            if image_mode is not None and image_mode != images_kwargs["mode"]:
                raise ValueError(f"`image_mode` ({image_mode!r}) and `images_kwargs['mode']` "
                                 f"({images_kwargs['mode']!r}) disagree; give one.")
            image_mode = images_kwargs.pop("mode")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        if images is not None and image_tokens is not None:
            raise ValueError("give either `images` or `image_tokens`, not both.")
        if image_mode is None:
            image_mode = "edit" if mode == "edit" else "understanding"
        if image_mode not in ("understanding", "edit", "none"):
            raise ValueError(f"`image_mode` must be 'understanding', 'edit' or 'none', got {image_mode!r}.")

        # ---- text
        if text is None:
            if mode in ("t2i", "edit", "interleaved", "raw"):
                raise ValueError(f"`text` is required for mode {mode!r}.")
            text = ""
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("`text` must be a string or a non-empty list of strings.")
        texts = list(texts)
        batch = len(texts)
        if mode != "raw":
            for index, message in enumerate(texts):
                # An empty question is allowed (the image alone); every other blank text would reach the model as
                # an empty prompt and fail later with an unrelated message.
                if not message.strip() and (message or mode != "understanding"):
                    name = "text" if single else f"text[{index}]"
                    raise ValueError(f"`{name}` (the {TEXT_ROLES[mode]}) is empty or only whitespace; give it in "
                                     "words.")

        # ---- images: one list of {"grid", "codes", "name"} per sample
        if mode == "t2i" and (images is not None or image_tokens is not None):
            raise ValueError("mode 't2i' takes no `images` / `image_tokens`; use mode 'edit' to edit an image.")
        infos = [[] for _ in range(batch)]
        pixel_values, grids_thw = [], []
        if images is not None:
            samples = per_sample(images, batch, "images", is_image_item)
            for index, sample in enumerate(samples):
                if not sample:
                    continue
                checked = [self._check_image(image) for image in sample]
                options = {"max_grid_side": self.num_reserved_tokens - 1, **images_kwargs}
                out = self.image_processor.preprocess(checked, mode=image_mode, return_tensors="pt", **options)
                pixel_values.append(out["pixel_values"])
                grids_thw.append(out["image_grid_thw"])
                for _, h, w in out["image_grid_thw"].tolist():
                    infos[index].append({"grid": (h, w), "codes": None, "name": "images"})
        elif image_tokens is not None:
            self._require_offset("`image_tokens`")
            samples = per_sample(image_tokens, batch, "image_tokens", is_code_item)
            for index, sample in enumerate(samples):
                for item in sample:
                    h, w, codes = code_grid(item, self.codebook_size)
                    infos[index].append({"grid": (h, w), "codes": codes, "name": "image_tokens"})
        if mode == "edit" and any(not sample for sample in infos):
            raise ValueError("mode 'edit' needs a source image (`images` or `image_tokens`) for every text.")

        # ---- output grid
        if mode == "t2i":
            out_grids = [self.generation_grid(height, width, grid)] * batch
        elif mode == "edit":
            if height is None and width is None and grid is None:
                out_grids = [sample[0]["grid"] for sample in infos]  # same grid as the (first) source image
                for (h, w), sample in zip(out_grids, infos):
                    self.image_header_ids(h, w, source=sample[0]["name"])
            else:
                out_grids = [self.generation_grid(height, width, grid)] * batch
        elif height is not None or width is not None or grid is not None:
            raise ValueError(f"`height` / `width` / `grid` are only used by modes 't2i' and 'edit', not {mode!r}.")
        if thinking and mode != "t2i":
            raise ValueError("`thinking` applies to mode 't2i' only.")
        if image_cfg and mode != "edit":
            raise ValueError("`image_cfg` applies to mode 'edit' only.")
        if mode == "raw" and system_prompt is not None:
            raise ValueError("`system_prompt` is not used with mode 'raw' (the text is the full prompt).")

        # ---- templates
        rows = {"input_ids": []}
        offsets = [] if with_offsets else None
        unknown = {}  # words the tokenizer does not know, collected over every row of this call
        uncond_wanted = mode in ("t2i", "edit", "interleaved") and return_uncond
        if uncond_wanted:
            self._require_uncondition()
            rows["uncond_input_ids"] = []
        if image_cfg:
            rows["uncond_image_input_ids"] = []
        for index, message in enumerate(texts):
            name = "text" if single else f"text[{index}]"
            blocks = [self._image_block(info) for info in infos[index]]
            if mode == "raw":
                ids, spans = self._raw_row(message, blocks, name, unknown, with_offsets)
                rows["input_ids"].append(ids)
                if with_offsets:
                    offsets.append(spans)
                continue
            if mode == "understanding":
                sys = self._system_prompt("understanding", system_prompt)
                parts = [system_turn(sys)] + self._message_parts(message, blocks, name) + [ASSISTANT_TURN]
                rows["input_ids"].append(self._tokenize_parts(parts, unknown))
                continue
            if mode == "interleaved":
                sys = self._system_prompt("interleaved", system_prompt)
                prefix, suffix = system_turn(sys), [ASSISTANT_TURN]
                rows["input_ids"].append(self._tokenize_parts([prefix] + self._message_parts(message, blocks, name)
                                                              + suffix, unknown))
                if uncond_wanted:
                    rows["uncond_input_ids"].append(self._tokenize_parts([prefix] + blocks + [UNCONDITION] + suffix))
                continue
            header = self.image_header_ids(*out_grids[index])
            if mode == "t2i":
                if self.image_token in message:
                    raise ValueError(f"`{name}` has {self.image_token} markers but mode 't2i' takes no images.")
                sys = self._system_prompt("t2i_thinking" if thinking else "t2i", system_prompt)
                prefix = system_turn(sys)
                cond = [prefix, UserText(message), ASSISTANT_TURN] + ([] if thinking else [header])
                rows["input_ids"].append(self._tokenize_parts(cond, unknown))
                if uncond_wanted:
                    # Thinking phase 2: the reference ports write this row without the spaces around the system text.
                    uncond = [system_turn(sys, spaced=not thinking), UNCONDITION, ASSISTANT_TURN, header]
                    rows["uncond_input_ids"].append(self._tokenize_parts(uncond))
                continue
            # edit
            sys = self._system_prompt("edit", system_prompt)
            prefix = system_turn(sys)
            suffix = [ASSISTANT_TURN, header]
            cond = [prefix] + self._message_parts(message, blocks, name) + suffix
            rows["input_ids"].append(self._tokenize_parts(cond, unknown))
            if uncond_wanted:
                rows["uncond_input_ids"].append(self._tokenize_parts([prefix] + blocks + [UNCONDITION] + suffix))
            if image_cfg:
                bare = [[self.image_start_token_id] for _ in blocks]
                parts = [prefix] + self._message_parts(message, bare, name) + suffix
                rows["uncond_image_input_ids"].append(self._tokenize_parts(parts))

        if unknown:
            logger.warning(f"the tokenizer does not know {', '.join(map(repr, unknown))}: the model reads "
                           f"{self.tokenizer.unk_token} there and cannot follow those words.")
        if add_bos:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise ValueError("`add_bos=True` but the tokenizer has no BOS token.")
            rows = {key: [[bos] + row for row in value] for key, value in rows.items()}
            if with_offsets:
                offsets = [[(0, 0)] + spans for spans in offsets]

        data = self._layout(rows, text_kwargs, offsets)
        if with_replacements:
            # The text is tokenized as given (image blocks are written as ids, not as expanded text), so no span of it
            # was replaced: the offsets above already point into `text`.
            data["text_replacement_offsets"] = [[] for _ in texts]
        if pixel_values:
            data["pixel_values"] = torch.cat(pixel_values)
            data["image_grid_thw"] = torch.cat(grids_thw)
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["text_replacement_offsets"])

    # ------------------------------------------------------------------ helpers per task

    def build_understanding_prompt(self, question: str = "", *, images=None, image_tokens=None,
                                   system_prompt: Optional[str] = None, **kwargs) -> BatchFeature:
        """Understanding prompt:
        `<role>SYSTEM</role> {sys} <role>HUMAN</role>{IMG...}{question}<role>ASSISTANT</role>`."""
        return self(text=question, images=images, image_tokens=image_tokens, mode="understanding",
                    system_prompt=system_prompt, **kwargs)

    def build_t2i_prompt(self, prompt, height: Optional[int] = None, width: Optional[int] = None, *,
                         grid: Optional[tuple] = None, thinking: bool = False, **kwargs) -> BatchFeature:
        """Text-to-image prompts: `input_ids` (cond) and `uncond_input_ids`; `height` / `width` in pixels (default
        1024, 32 px per token) or `grid` = (h, w) in tokens."""
        return self(text=prompt, mode="t2i", height=height, width=width, grid=grid, thinking=thinking, **kwargs)

    def build_edit_prompt(self, instruction, *, images=None, image_tokens=None, image_cfg: bool = False,
                          **kwargs) -> BatchFeature:
        """Editing prompts: cond, `uncond_input_ids` (instruction -> `<uncondition>`) and, with `image_cfg`,
        `uncond_image_input_ids` (source blocks -> bare `<|image|>`). Several source images = multi-reference."""
        return self(text=instruction, images=images, image_tokens=image_tokens, mode="edit", image_cfg=image_cfg,
                    **kwargs)

    def t2i_thinking_prefix(self, input_ids, thinking_ids, height: Optional[int] = None,
                            width: Optional[int] = None, *, grid: Optional[tuple] = None) -> torch.LongTensor:
        """Phase-2 prefix of thinking-mode T2I: the phase-1 prompt, the generated reasoning up to its first `<boi>`
        (a header the model started, `<|image|>` and size tokens, is dropped) and the header of the requested grid
        (as SGLang-Omni does; whether the original keeps the model's own header is an open point).

        Args:
            input_ids: the phase-1 prompt (1-D, or [1, P]; left padding marked with the pad id is not allowed).
            thinking_ids: the phase-1 generated ids (1-D or [1, G]).
        """
        prompt = flat_ids(input_ids, "input_ids")
        generated = reasoning_ids(flat_ids(thinking_ids, "thinking_ids"), boi_id=self.boi_token_id,
                                  stop_ids={self.eos_token_id, self.mask_token_id} - {None},
                                  image_start_id=self.image_start_token_id, size_ids=self._reserved_values)
        h, w = self.generation_grid(height, width, grid)
        return torch.tensor(prompt + generated + self.image_header_ids(h, w), dtype=torch.long)

    # ------------------------------------------------------------------ chat

    def apply_chat_template(self, conversation, chat_template=None, processor_kwargs=None, **kwargs):
        """`ProcessorMixin.apply_chat_template` with the LLaDA2.0-Uni template. Messages hold content lists of
        `{"type": "image", ...}` / `{"type": "text", "text": ...}`; roles system / user / assistant become SYSTEM /
        HUMAN / ASSISTANT; a message's images go first, then its texts. The processor's understanding system prompt
        is used unless the conversation starts with a system message (or `system_prompt=` is given). With
        `tokenize=True` the rendered prompt is processed with `mode="raw"`; `return_assistant_tokens_mask=True` maps
        the template's `{% generation %}` spans (the assistant answers) to ids through the offsets of mode "raw", and
        returns `assistant_masks` in the type of `input_ids`."""
        processor_kwargs = dict(processor_kwargs or {})
        processor_kwargs.setdefault("mode", "raw")
        template = self._resolve_chat_template(chat_template)
        if "system_prompt" not in kwargs and "system_prompt" in template:
            kwargs["system_prompt"] = self._system_prompt("understanding", None)
        out = super().apply_chat_template(
            conversation, chat_template=chat_template, processor_kwargs=processor_kwargs, **kwargs
        )
        # transformers leaves the masks as lists when no `return_tensors` is given, whatever the processor's default.
        if isinstance(out, BatchFeature) and isinstance(out.get("assistant_masks"), list):
            ids = out["input_ids"]
            if isinstance(ids, torch.Tensor):
                out["assistant_masks"] = torch.tensor(out["assistant_masks"], dtype=ids.dtype).reshape(ids.shape)
            elif hasattr(ids, "astype"):  # numpy
                masks = torch.tensor(out["assistant_masks"], dtype=torch.long).reshape(ids.shape)
                out["assistant_masks"] = masks.numpy().astype(ids.dtype)
        return out

    # ------------------------------------------------------------------ decoding

    def split_generation(self, ids, skip_special_tokens: bool = True) -> list:
        """Split a (generated) sequence into ordered segments.

        Text becomes `{"type": "text", "text": str}` (decoded by the tokenizer). An image written as
        `<|image|><|reserved_token_h|><|reserved_token_w|><boi>` + codes (+ optional `<|/image|>`) becomes
        `{"type": "image", "height": h, "width": w, "token_ids": LongTensor [n] (offset-free), "complete": n == h*w}`;
        image ids without a header become an image segment with `height` = `width` = None. A 2-D input gives one
        list per row.
        """
        self._require_offset("`split_generation`")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 or (
            isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple, torch.Tensor))
        ):
            return [self.split_generation(row, skip_special_tokens) for row in ids]
        return split_ids(
            flat_ids(ids, "ids"),
            decode=lambda text: self.tokenizer.decode(text, skip_special_tokens=skip_special_tokens),
            image_start_id=self.image_start_token_id,
            image_end_id=self.image_end_token_id,
            boi_id=self.boi_token_id,
            reserved_values=self._reserved_values,
            offset=self.image_token_offset,
            codebook_size=self.codebook_size,
        )

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw"]


__all__ = ["LLaDA2UniProcessor", "DEFAULT_CHAT_TEMPLATE", "DEFAULT_SYSTEM_PROMPTS"]
