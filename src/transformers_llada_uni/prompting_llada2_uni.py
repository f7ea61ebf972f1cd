"""Prompt templates of LLaDA2.0-Uni and the pure helpers of `LLaDA2UniProcessor` (no tokenizer or image processor
needed): the special-token strings, default system prompts, the default chat template, input normalisation and the
splitting of generated ids into text and image segments.

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
"""

import numbers
import re

import torch

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
ASSISTANT_TURN = "<role>ASSISTANT</role>"
# What the user's text is in each templated mode, for messages about it.
TEXT_ROLES = {"understanding": "question", "t2i": "prompt", "edit": "instruction", "interleaved": "text"}


class UserText(str):
    """Text a user wrote (question, prompt, instruction): tokenized with special-token strings read as plain text."""


def word_at(text: str, span) -> str:
    """The whitespace-delimited word of `text` around the character span (start, end) of one token."""
    start, end = span
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end]


def system_turn(system_prompt: str, *, spaced: bool = True) -> str:
    """The system turn and the start of the human turn: `<role>SYSTEM</role> {sys} <role>HUMAN</role>`.

    `spaced=False` drops the two spaces around the system text: the reference ports write thinking-mode text-to-image's
    unconditional row that way, and its ids must match theirs."""
    space = " " if spaced else ""
    return f"<role>SYSTEM</role>{space}{system_prompt}{space}<role>HUMAN</role>"


# One user turn with images renders exactly the understanding template; `<image>` markers become image blocks. An
# assistant message's content is a `{% generation %}` block: `return_assistant_tokens_mask=True` marks its tokens.
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
    "{%- set content -%}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{- '<image>' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endset -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- content -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- content -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<role>ASSISTANT</role>' -}}{%- endif -%}"
)


def flat_ids(ids, name: str) -> list:
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


def per_sample(value, batch: int, name: str, is_item) -> list:
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


def is_code_item(value) -> bool:
    """Whether `value` is one `image_tokens` entry (a dict, an (h, w, codes) triple or a 2-D code grid)."""
    if isinstance(value, dict):
        return True
    if isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, numbers.Integral) for v in value[:2]):
        return True
    return hasattr(value, "shape") and len(value.shape) == 2


def is_image_item(value) -> bool:
    """Whether `value` is one image (anything but a list, tuple or None)."""
    return not isinstance(value, (list, tuple)) and value is not None


def code_grid(item, codebook_size: int, name: str = "image_tokens") -> tuple:
    """(h, w, codes list) from a 2-D code grid, a (h, w, codes) triple or a dict with token_ids + h/w; the codes
    must lie in [0, codebook_size)."""
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
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"`{name}` codes must lie in [0, {codebook_size}) (offset-free VQ codes); got values in "
            f"[{int(codes.min())}, {int(codes.max())}]."
        )
    return h, w, codes.tolist()


def split_ids(ids: list, *, decode, image_start_id: int, image_end_id: int, boi_id: int, reserved_values: dict,
              offset: int, codebook_size: int) -> list:
    """Split a flat list of ids into ordered text / image segments (see `LLaDA2UniProcessor.split_generation`).

    `decode` turns a list of text ids into a string; `reserved_values` maps the id of `<|reserved_token_N|>` to N;
    image codes are the ids in [offset, offset + codebook_size).
    """
    end = offset + codebook_size
    segments, text = [], []

    def flush():
        if text:
            decoded = decode(text)
            if decoded:
                segments.append({"type": "text", "text": decoded})
            text.clear()

    index, n = 0, len(ids)
    while index < n:
        token = ids[index]
        if (
            token == image_start_id
            and index + 3 < n
            and ids[index + 1] in reserved_values
            and ids[index + 2] in reserved_values
            and ids[index + 3] == boi_id
        ):
            flush()
            h, w = reserved_values[ids[index + 1]], reserved_values[ids[index + 2]]
            index += 4
            codes = []
            while index < n and len(codes) < h * w and offset <= ids[index] < end:
                codes.append(ids[index] - offset)
                index += 1
            if index < n and ids[index] == image_end_id:
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


def reasoning_ids(generated: list, *, boi_id: int, stop_ids, image_start_id: int, size_ids) -> list:
    """The reasoning of thinking-mode text-to-image: the generated ids before the first `<boi>`, cut at the first
    stop id (EOS, mask, padding), without a header the model had started (`<|image|>` and size tokens)."""
    if boi_id in generated:
        generated = generated[: generated.index(boi_id)]
    for index, token in enumerate(generated):
        if token in stop_ids:
            generated = generated[:index]
            break
    sizes = set(size_ids)
    generated = list(generated)
    while generated and (generated[-1] in sizes or generated[-1] == image_start_id):
        if generated.pop() == image_start_id:
            break
    return generated


__all__ = [
    "ASSISTANT_TURN",
    "reasoning_ids",
    "BOI",
    "DEFAULT_CHAT_TEMPLATE",
    "DEFAULT_SYSTEM_PROMPTS",
    "END_OF_TEXT",
    "IMAGE_END",
    "IMAGE_START",
    "MASK",
    "MODES",
    "RESERVED_PATTERN",
    "TEXT_ROLES",
    "UNCONDITION",
    "UserText",
    "code_grid",
    "flat_ids",
    "is_code_item",
    "is_image_item",
    "per_sample",
    "split_ids",
    "system_turn",
    "word_at",
]
