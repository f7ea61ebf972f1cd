"""Processor for LLaDA2.0-Uni: the prompt templates of the original around the tokenizer and the SigLIP-VQ image
processor.

Templates (original-system.md section 6.2; each is one line, `{IMG}` an input image block, `{HDR}` the output header):

    understanding   <role>SYSTEM</role> {sys} <role>HUMAN</role>{IMG...}{question}<role>ASSISTANT</role>
    t2i cond        <role>SYSTEM</role> {t2i sys} <role>HUMAN</role>{prompt}<role>ASSISTANT</role>{HDR}
    t2i uncond      t2i cond with {prompt} replaced by <uncondition>
    edit cond       <role>SYSTEM</role> {edit sys} <role>HUMAN</role>{IMG...}{instruction}<role>ASSISTANT</role>{HDR}
    edit uncond     edit cond with {instruction} replaced by <uncondition>
    edit uncond_img edit cond with every {IMG} replaced by a bare <|image|>
    interleaved     <role>SYSTEM</role> {interleaved sys} <role>HUMAN</role>{IMG...}{text}<role>ASSISTANT</role>
    interl. uncond  interleaved with {text} replaced by <uncondition> (images kept; CFG of generated images)

    {IMG} = <|image|><|reserved_token_h|><|reserved_token_w|><boi> + h*w image ids + <|/image|>
    {HDR} = <|image|><|reserved_token_h|><|reserved_token_w|><boi>

For images given as pixels the h*w image ids are placeholders (the `<|image|>` id) that the model replaces by the VQ
codes of `pixel_values` (`LLaDA2UniForConditionalGeneration.insert_image_tokens`); for precomputed `image_tokens`
(offset-free codes) the vocabulary ids `image_token_offset + code` are written directly.

Text is tokenized by the tokenizer without added special tokens; every image block and header is written as ids.
Text stretches always end at a special token (`<|image|>`, `<boi>`, `<|/image|>`), which tokenizers split off
first, so this equals tokenizing the whole prompt string at once.
"""

import numbers
import re
from typing import Optional

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

IMAGE_START = "<|image|>"
IMAGE_END = "<|/image|>"
BOI = "<boi>"
UNCONDITION = "<uncondition>"
MASK = "<|mask|>"
END_OF_TEXT = "<|endoftext|>"
RESERVED_PATTERN = re.compile(r"^<\|reserved_token_(\d+)\|>$")

DEFAULT_SYSTEM_PROMPTS = {
    # [open] in the reference: an earlier port used "detailed thinking off".
    "understanding": "You are a multimodal understanding assistant.",
    "t2i": "You are a text-to-image generation assistant.",
    "t2i_thinking": "You are a text-to-image generation assistant with a thinking process.",
    "edit": "You are an image editing assistant.",
    # [open] in the reference (SGLang-Omni only); the template around it is our own choice.
    "interleaved": "You are a interleaved generation assistant.",
}
MODES = ("understanding", "t2i", "edit", "interleaved", "raw")

# One user turn with images renders exactly the understanding template; `<image>` markers become image blocks.
DEFAULT_CHAT_TEMPLATE = (
    "{%- if system_prompt is defined and system_prompt is not none -%}"
    "{%- set default_system = system_prompt -%}"
    "{%- else -%}"
    "{%- set default_system = 'You are a multimodal understanding assistant.' -%}"
    "{%- endif -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set system_text = messages[0]['content'] -%}"
    "{%- else -%}"
    "{%- set system_text = messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join('') -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_text = default_system -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- '<role>SYSTEM</role> ' + system_text + ' ' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<role>HUMAN</role>' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<role>ASSISTANT</role>' -}}"
    "{%- else -%}"
    "{{- raise_exception('Only a leading system message and user / assistant messages are supported, got role '"
    " + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<role>ASSISTANT</role>' -}}{%- endif -%}"
)

_IGNORED_CALL_KWARGS = ("videos", "audio", "return_text_replacement_offsets", "sanitize_control_tokens")


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
        from PIL import Image

        if isinstance(image, str):
            from transformers.image_utils import load_image

            image = load_image(image)
        if isinstance(image, Image.Image):
            height, width = image.height, image.width
        elif hasattr(image, "shape"):
            shape = tuple(image.shape)
            if len(shape) != 3 or shape[-1] not in (3, 4):
                raise ValueError(
                    f"`{name}` arrays must have shape [height, width, 3] (RGB) or [height, width, 4] (RGBA), got "
                    f"{list(shape)}."
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

    def _code_grid(self, item, name: str = "image_tokens") -> tuple:
        """(h, w, codes list) from a 2-D code grid, a (h, w, codes) triple or a dict with token_ids + h/w."""
        if isinstance(item, dict):
            h = item.get("h", item.get("height"))
            w = item.get("w", item.get("width"))
            codes = item.get("token_ids")
            if h is None or w is None or codes is None:
                raise ValueError(f"`{name}` dicts need `token_ids` and `h` / `w` (or `height` / `width`).")
        elif isinstance(item, tuple) and len(item) == 3:
            h, w, codes = item
        elif hasattr(item, "shape") and len(item.shape) == 2:
            h, w = int(item.shape[0]), int(item.shape[1])
            codes = item
        else:
            raise ValueError(
                f"each `{name}` entry must be a [h, w] code grid, a (h, w, codes) triple or a dict with `token_ids`, "
                f"`h`, `w`; got {type(item).__name__}."
            )
        h, w = int(h), int(w)
        if h <= 0 or w <= 0:
            raise ValueError(f"`{name}`: grid sides must be positive, got {h}x{w}.")
        codes = torch.as_tensor(codes).reshape(-1)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"`{name}` must hold integer codes, got {codes.dtype}.")
        if codes.numel() != h * w:
            raise ValueError(f"`{name}`: a {h}x{w} grid needs {h * w} codes, got {codes.numel()}.")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"`{name}` codes must lie in [0, {self.codebook_size}) (offset-free VQ codes); got values in "
                f"[{int(codes.min())}, {int(codes.max())}]."
            )
        return h, w, codes.tolist()

    @staticmethod
    def _per_sample(value, batch: int, name: str, is_item) -> list:
        """Normalise images / image_tokens to one list per sample."""
        if value is None:
            return [[] for _ in range(batch)]
        if is_item(value):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"`{name}` must be one item, a list, or a list of lists (one per text).")
        value = list(value)
        if any(isinstance(v, list) or v is None for v in value):
            if len(value) != batch:
                raise ValueError(f"`{name}` has {len(value)} entries for {batch} texts.")
            return [[] if v is None else (list(v) if isinstance(v, list) else [v]) for v in value]
        if batch == 1:
            return [value]
        if len(value) == batch:
            return [[v] for v in value]
        raise ValueError(
            f"`{name}` has {len(value)} items for {batch} texts; pass one list per text (a list of lists)."
        )

    @staticmethod
    def _is_code_item(value) -> bool:
        if isinstance(value, dict):
            return True
        if isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, numbers.Integral) for v in value[:2]):
            return True
        return hasattr(value, "shape") and len(value.shape) == 2

    @staticmethod
    def _is_image_item(value) -> bool:
        return not isinstance(value, (list, tuple)) and value is not None

    # ------------------------------------------------------------------ token assembly

    def _tokenize_parts(self, parts: list) -> list:
        """Concatenate parts: str -> tokenized (adjacent strings merged first), list[int] -> ids as they are."""
        ids, pending = [], []
        for part in parts + [None]:
            if isinstance(part, str):
                pending.append(part)
                continue
            if pending:
                text = "".join(pending)
                if text:
                    ids.extend(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                pending = []
            if part is not None:
                ids.extend(part)
        return ids

    def _image_block(self, image_info: dict) -> list:
        """One input image block as ids (placeholders for pixels, vocabulary ids for precomputed codes)."""
        h, w = image_info["grid"]
        header = self.image_header_ids(h, w, source=image_info["name"])
        if image_info["codes"] is None:
            content = [self.image_start_token_id] * (h * w)
        else:
            content = [self.image_token_offset + code for code in image_info["codes"]]
        return header + content + [self.image_end_token_id]

    def _message_parts(self, message: str, blocks: list, name: str, markers_required: bool = False) -> list:
        """The message with image blocks at its `<image>` markers, or all blocks at its start when it has none."""
        pieces = message.split(self.image_token)
        markers = len(pieces) - 1
        if markers == 0 and not markers_required:
            return list(blocks) + ([message] if message else [])
        if markers != len(blocks):
            raise ValueError(
                f"`{name}` has {markers} {self.image_token} marker(s) but {len(blocks)} image(s) were given for it."
            )
        parts = [pieces[0]]
        for block, piece in zip(blocks, pieces[1:]):
            parts.extend([block, piece])
        return parts

    def _pad(self, rows: list, return_tensors) -> tuple:
        longest = max(len(r) for r in rows)
        if return_tensors is None and all(len(r) == longest for r in rows):
            return [list(r) for r in rows], [[1] * len(r) for r in rows]
        ids = [[self.pad_token_id] * (longest - len(r)) + list(r) for r in rows]
        mask = [[0] * (longest - len(r)) + [1] * len(r) for r in rows]
        return ids, mask

    # ------------------------------------------------------------------ main entry point

    def __call__(
        self,
        *,
        text=None,
        images=None,
        image_tokens=None,
        mode: str = "understanding",
        system_prompt: Optional[str] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        grid: Optional[tuple] = None,
        thinking: bool = False,
        return_uncond: bool = True,
        image_cfg: bool = False,
        image_mode: Optional[str] = None,
        images_kwargs: Optional[dict] = None,
        add_bos: bool = False,
        return_tensors="pt",
        **kwargs,
    ) -> BatchFeature:
        r"""
        Build model inputs. All arguments are keyword-only.

        Args:
            text (`str` or `list[str]`): per sample, the user message: the question ("understanding"), the image
                description ("t2i") or the edit instruction ("edit"); with `mode="raw"` a complete prompt (e.g. from
                `apply_chat_template(..., tokenize=False)`). `<image>` markers place the sample's images; without
                markers the images go at the start of the message, in order (mode "raw" requires markers).
            images (*optional*): PIL images, uint8 arrays [H, W, 3|4] or paths. One image or a list for one text; a
                list with one entry (an image, a list of images or None) per text for a batch.
            image_tokens (*optional*): instead of `images`, precomputed offset-free VQ codes, nested the same way;
                each entry a [h, w] code grid, a (h, w, codes) triple or a dict with `token_ids` and `h` / `w`
                (`height` / `width`). The vocabulary ids `image_token_offset + code` are written directly.
            mode (`str`, defaults to "understanding"): "understanding", "t2i", "edit", "interleaved" (a response
                mixing text and images; see `generate_interleaved`) or "raw" (no template).
            system_prompt (`str`, *optional*): replaces the mode's system prompt for this call.
            height / width (`int`, *optional*): output size in pixels for "t2i" (default 1024 x 1024, mapped by
                `image_processor.generation_grid`, 32 px per token) or to override the edit output grid.
            grid (`tuple`, *optional*): the output grid (h, w) in tokens instead of `height` / `width`.
            thinking (`bool`, defaults to False): "t2i" thinking mode: the phase-1 prompt (no header, thinking
                system prompt; the model writes its reasoning first) and the phase-2 unconditional prompt.
            return_uncond (`bool`, defaults to True): "t2i" / "edit" / "interleaved": also return `uncond_input_ids` /
                `uncond_attention_mask` (prompt, or instruction, replaced by `<uncondition>`).
            image_cfg (`bool`, defaults to False): "edit": also return `uncond_image_input_ids` /
                `uncond_image_attention_mask` (each source image block replaced by a bare `<|image|>`).
            image_mode (`str`, *optional*): image-processor path; defaults to "edit" for "edit", else
                "understanding".
            images_kwargs (`dict`, *optional*): extra arguments for `image_processor.preprocess` (e.g. `edit_crop`).
            add_bos (`bool`, defaults to False): prepend the tokenizer's BOS (the templates have none).
            return_tensors (defaults to "pt"): "pt", "np" or None (lists).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` (rows left-padded with the pad id), `pixel_values` +
            `image_grid_thw` when pixel images were given, and the unconditional rows described above.
        """
        if kwargs.pop("add_special_tokens", False):
            add_bos = True
        for key in _IGNORED_CALL_KWARGS:
            value = kwargs.pop(key, None)
            if key in ("videos", "audio") and value is not None:
                raise ValueError(f"`{key}` are not supported by LLaDA2.0-Uni.")
        if kwargs.pop("return_offsets_mapping", False):
            raise ValueError("`return_offsets_mapping` (assistant token masks) is not supported by this processor.")
        if kwargs:
            raise ValueError(f"unexpected argument(s) {sorted(kwargs)} for `LLaDA2UniProcessor.__call__`.")
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

        # ---- images: one list of {"grid", "codes", "name"} per sample
        if mode == "t2i" and (images is not None or image_tokens is not None):
            raise ValueError("mode 't2i' takes no `images` / `image_tokens`; use mode 'edit' to edit an image.")
        infos = [[] for _ in range(batch)]
        pixel_values, grids_thw = [], []
        if images is not None:
            per_sample = self._per_sample(images, batch, "images", self._is_image_item)
            for index, sample in enumerate(per_sample):
                if not sample:
                    continue
                checked = [self._check_image(image) for image in sample]
                out = self.image_processor.preprocess(
                    checked, mode=image_mode, return_tensors="pt", **(images_kwargs or {})
                )
                pixel_values.append(out["pixel_values"])
                grids_thw.append(out["image_grid_thw"])
                for _, h, w in out["image_grid_thw"].tolist():
                    infos[index].append({"grid": (h, w), "codes": None, "name": "images"})
        elif image_tokens is not None:
            self._require_offset("`image_tokens`")
            per_sample = self._per_sample(image_tokens, batch, "image_tokens", self._is_code_item)
            for index, sample in enumerate(per_sample):
                for item in sample:
                    h, w, codes = self._code_grid(item)
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
                parts = self._message_parts(message, blocks, name, markers_required=True)
                rows["input_ids"].append(self._tokenize_parts(parts))
                continue
            if mode == "understanding":
                sys = self._system_prompt("understanding", system_prompt)
                parts = [f"<role>SYSTEM</role> {sys} <role>HUMAN</role>"]
                parts += self._message_parts(message, blocks, name) + ["<role>ASSISTANT</role>"]
                rows["input_ids"].append(self._tokenize_parts(parts))
                continue
            if mode == "interleaved":
                sys = self._system_prompt("interleaved", system_prompt)
                prefix, suffix = f"<role>SYSTEM</role> {sys} <role>HUMAN</role>", ["<role>ASSISTANT</role>"]
                rows["input_ids"].append(self._tokenize_parts([prefix] + self._message_parts(message, blocks, name)
                                                              + suffix))
                if uncond_wanted:
                    rows["uncond_input_ids"].append(self._tokenize_parts([prefix] + blocks + [UNCONDITION] + suffix))
                continue
            header = self.image_header_ids(*out_grids[index])
            if mode == "t2i":
                if self.image_token in message:
                    raise ValueError(f"`{name}` has {self.image_token} markers but mode 't2i' takes no images.")
                sys = self._system_prompt("t2i_thinking" if thinking else "t2i", system_prompt)
                prefix = f"<role>SYSTEM</role> {sys} <role>HUMAN</role>"
                cond = [prefix, message, "<role>ASSISTANT</role>"] + ([] if thinking else [header])
                rows["input_ids"].append(self._tokenize_parts(cond))
                if uncond_wanted:
                    # Thinking phase 2: the reference ports write this row without the spaces around the system text.
                    uncond_prefix = f"<role>SYSTEM</role>{sys}<role>HUMAN</role>" if thinking else prefix
                    uncond = [uncond_prefix, UNCONDITION, "<role>ASSISTANT</role>", header]
                    rows["uncond_input_ids"].append(self._tokenize_parts(uncond))
                continue
            # edit
            sys = self._system_prompt("edit", system_prompt)
            prefix = f"<role>SYSTEM</role> {sys} <role>HUMAN</role>"
            suffix = ["<role>ASSISTANT</role>", header]
            cond = [prefix] + self._message_parts(message, blocks, name) + suffix
            rows["input_ids"].append(self._tokenize_parts(cond))
            if uncond_wanted:
                rows["uncond_input_ids"].append(self._tokenize_parts([prefix] + blocks + [UNCONDITION] + suffix))
            if image_cfg:
                bare = [[self.image_start_token_id] for _ in blocks]
                parts = [prefix] + self._message_parts(message, bare, name) + suffix
                rows["uncond_image_input_ids"].append(self._tokenize_parts(parts))

        if add_bos:
            bos = self.tokenizer.bos_token_id
            if bos is None:
                raise ValueError("`add_bos=True` but the tokenizer has no BOS token.")
            rows = {key: [[bos] + row for row in value] for key, value in rows.items()}

        data = {}
        for key, value in rows.items():
            ids, mask = self._pad(value, return_tensors)
            data[key] = ids
            data[key.replace("input_ids", "attention_mask")] = mask
        if pixel_values:
            data["pixel_values"] = torch.cat(pixel_values)
            data["image_grid_thw"] = torch.cat(grids_thw)
        return BatchFeature(data=data, tensor_type=return_tensors)

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
        prompt = _flat_ids(input_ids, "input_ids")
        generated = _flat_ids(thinking_ids, "thinking_ids")
        if self.boi_token_id in generated:
            generated = generated[: generated.index(self.boi_token_id)]
        stop = {self.eos_token_id, self.mask_token_id} - {None}
        for index, token in enumerate(generated):
            if token in stop:
                generated = generated[:index]
                break
        while generated and (generated[-1] in self._reserved_values or generated[-1] == self.image_start_token_id):
            last = generated.pop()
            if last == self.image_start_token_id:
                break
        h, w = self.generation_grid(height, width, grid)
        return torch.tensor(prompt + generated + self.image_header_ids(h, w), dtype=torch.long)

    # ------------------------------------------------------------------ chat

    def apply_chat_template(self, conversation, chat_template=None, processor_kwargs=None, **kwargs):
        """`ProcessorMixin.apply_chat_template` with the LLaDA2.0-Uni template. Messages hold content lists of
        `{"type": "image", ...}` / `{"type": "text", "text": ...}`; roles system / user / assistant become SYSTEM /
        HUMAN / ASSISTANT; a message's images go first, then its texts. The processor's understanding system prompt
        is used unless the conversation starts with a system message (or `system_prompt=` is given). With
        `tokenize=True` the rendered prompt is processed with `mode="raw"`."""
        processor_kwargs = dict(processor_kwargs or {})
        processor_kwargs.setdefault("mode", "raw")
        template = self._resolve_chat_template(chat_template)
        if "system_prompt" not in kwargs and "system_prompt" in template:
            kwargs["system_prompt"] = self._system_prompt("understanding", None)
        return super().apply_chat_template(
            conversation, chat_template=chat_template, processor_kwargs=processor_kwargs, **kwargs
        )

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
        ids = _flat_ids(ids, "ids")
        offset, end = self.image_token_offset, self.image_token_offset + self.codebook_size
        segments, text = [], []

        def flush():
            if text:
                decoded = self.tokenizer.decode(text, skip_special_tokens=skip_special_tokens)
                if decoded:
                    segments.append({"type": "text", "text": decoded})
                text.clear()

        index, n = 0, len(ids)
        while index < n:
            token = ids[index]
            if (
                token == self.image_start_token_id
                and index + 3 < n
                and ids[index + 1] in self._reserved_values
                and ids[index + 2] in self._reserved_values
                and ids[index + 3] == self.boi_token_id
            ):
                flush()
                h, w = self._reserved_values[ids[index + 1]], self._reserved_values[ids[index + 2]]
                index += 4
                codes = []
                while index < n and len(codes) < h * w and offset <= ids[index] < end:
                    codes.append(ids[index] - offset)
                    index += 1
                if index < n and ids[index] == self.image_end_token_id:
                    index += 1
                segments.append({"type": "image", "height": h, "width": w,
                                 "token_ids": torch.tensor(codes, dtype=torch.long), "complete": len(codes) == h * w})
                continue
            if offset <= token < end:
                flush()
                codes = []
                while index < n and offset <= ids[index] < end:
                    codes.append(ids[index] - offset)
                    index += 1
                segments.append({"type": "image", "height": None, "width": None,
                                 "token_ids": torch.tensor(codes, dtype=torch.long), "complete": False})
                continue
            text.append(token)
            index += 1
        flush()
        return segments

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw"]


def _flat_ids(ids, name: str) -> list:
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"`{name}` must be 1-D (or [1, length]), got shape {list(ids.shape)}.")
        return [int(v) for v in ids.tolist()]
    if isinstance(ids, (list, tuple)):
        if len(ids) == 1 and isinstance(ids[0], (list, tuple)):
            ids = ids[0]
        return [int(v) for v in ids]
    raise ValueError(f"`{name}` must be a list of ids or a LongTensor, got {type(ids).__name__}.")


__all__ = ["LLaDA2UniProcessor", "DEFAULT_CHAT_TEMPLATE", "DEFAULT_SYSTEM_PROMPTS"]
