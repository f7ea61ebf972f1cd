"""`LLaDA2GenerationConfig`: the one carrier of every block-diffusion sampling setting.

Every default of text, image, edit, thinking and interleaved generation lives in `DEFAULTS` below (the original
release's values); a model folder's `generation_config.json` overrides them with values that fit that model, and a
call's keyword arguments override both. Nothing else holds a sampling default: task methods, pipelines and the CLI
take `generation_config=` plus keyword overrides and pass them through.

`resolve_generation_config` merges the three layers, maps the original API's names, applies transformers' meaning of
`do_sample` / `max_length` / `eos_token_id=None`, refuses options that have no meaning for diffusion decoding and
fits length defaults to the positions the model has left (an explicit request beyond them is an error).
"""

import contextlib
import math
from typing import Optional

from transformers import GenerationConfig

from .sprint_llada2_uni import SprintConfig

# The original release's settings (LLaDA2.0-Uni remote code and SGLang-Omni), except that temperature 0 is greedy.
DEFAULTS = {
    # text (understanding, chat, thinking phase 1)
    "max_new_tokens": 2048,
    "steps": 32,
    "block_length": None,  # None: the model config's block_length
    "threshold": 0.95,
    "temperature": 0.0,
    "do_sample": None,  # None: sample when temperature > 0 (the original rule)
    "top_k": None,
    "top_p": None,
    "minimal_topk": 1,
    "eos_early_stop": False,
    "num_return_sequences": 1,
    # image tokens (text-to-image, editing, the image phase of thinking)
    "image_steps": 8,
    "image_height": 1024,
    "image_width": 1024,
    "pixels_per_token": 32,
    "guidance_scale": 2.0,  # text-to-image CFG on the LLM logits (1 disables it)
    "edit_guidance_scale": 4.0,  # editing: weight of the instruction (cfg_text_scale)
    "image_guidance_scale": 0.0,  # editing: weight of the source image (cfg_image_scale); 0 skips those rows
    "restrict_to_image_vocab": True,
    # thinking text-to-image: the reasoning budget before the image
    "thinking_max_new_tokens": 4096,
    # interleaved text + images
    "max_grid": None,  # None: the largest side the size tokens can write
    "invalid_size": "clamp",
    # "frontier": text is committed left to right, one position at a time, so an image can open wherever the text
    # reaches; "parallel": text after the frontier is denoised in parallel too (it can fill the room an image needed)
    "interleaved_text": "frontier",
    # machinery
    "use_block_cache": True,
    "sprint": None,
    "output_history": False,
    "return_dict_in_generate": False,
    "generation_mode": None,  # None: chosen from the inputs (see generate())
}
# Names of the original API (and of earlier releases of this project) -> field.
ALIASES = {
    "gen_length": "max_new_tokens",
    "eos_id": "eos_token_id",
    "mask_id": "mask_token_id",
    "cfg_scale": "guidance_scale",
    "cfg_text_scale": "edit_guidance_scale",
    "cfg_image_scale": "image_guidance_scale",
    "thinking_gen_length": "thinking_max_new_tokens",
    "thinking_steps": "steps",
}
# Fields only an LLaDA2.0-Uni model uses (left out of a text-only model's generation_config.json).
IMAGE_FIELDS = ("image_steps", "image_height", "image_width", "pixels_per_token", "guidance_scale",
                "edit_guidance_scale", "image_guidance_scale", "restrict_to_image_vocab", "thinking_max_new_tokens",
                "max_grid", "invalid_size", "interleaved_text")
SPECIAL_IDS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
# The values of interleaved generation's two choice fields (the grammar, `generation_interleaved_llada2_uni.py`, reads
# them from here).
INVALID_SIZE_MODES = ("clamp", "error")
TEXT_ORDERS = ("frontier", "parallel")
GENERATION_MODES = ("text", "image", "thinking", "interleaved")
# transformers options with no meaning for block diffusion, with the value that means "off".
UNSUPPORTED = {
    "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": 0, "diversity_penalty": 0.0, "constraints": None,
    "force_words_ids": None, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "length_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0,
    "min_new_tokens": 0, "stop_strings": None, "max_time": None, "min_p": None, "top_h": None, "typical_p": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "sequence_bias": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None, "watermarking_config": None, "prompt_lookup_num_tokens": None,
    "assistant_early_exit": None, "dola_layers": None, "output_scores": False, "output_logits": False,
    "output_attentions": False, "output_hidden_states": False, "token_healing": False, "use_mtp": False,
}
_HINT = {"num_beams": "block diffusion commits tokens in parallel; there is no beam search",
         "output_scores": "use output_history=True for the per-step canvas"}


_BASE_FIELDS = set(GenerationConfig().__dict__)


class LLaDA2GenerationConfig(GenerationConfig):
    r"""
    Every setting of LLaDA2 block-diffusion generation, saved as `generation_config.json`. Unset fields take the
    model config's value (block length, special ids) or the release default (`DEFAULTS`).

    Text: `max_new_tokens` (2048; `gen_length`), `steps` (32 forwards per block at most), `block_length` (the model
    config's), `threshold` (0.95), `temperature` (0 = greedy), `do_sample` (None: sample when temperature > 0; True
    with temperature 0 samples at 1.0), `top_k`, `top_p`, `minimal_topk` (1), `eos_early_stop` (False),
    `num_return_sequences` (1), `mask_token_id`, `eos_token_id`, `pad_token_id`.
    Images: `image_steps` (8), `image_height` / `image_width` (1024 px) and `pixels_per_token` (32; decoded pixels per
    token side), `guidance_scale` (2.0, text-to-image CFG; `cfg_scale`), `edit_guidance_scale` (4.0;
    `cfg_text_scale`) and `image_guidance_scale` (0.0; `cfg_image_scale`) for editing's three-way CFG,
    `restrict_to_image_vocab` (True).
    Thinking: `thinking_max_new_tokens` (4096; the reasoning runs with `steps`). Interleaved: `max_grid`,
    `invalid_size` ("clamp" or "error"), `interleaved_text` ("frontier" or "parallel").
    Machinery: `use_block_cache` (True, exact), `sprint` (None; a dict of `SprintConfig` fields or True; approximate),
    `output_history`, `return_dict_in_generate`, `generation_mode` (None: from the inputs; "text", "image",
    "thinking", "interleaved").
    """

    def __init__(self, **kwargs):
        for alias, name in ALIASES.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                kwargs.setdefault(name, value)
        own = {key: kwargs.pop(key) for key in DEFAULTS if key in kwargs and key not in _BASE_FIELDS}
        if isinstance(own.get("sprint"), SprintConfig):  # a dict, so that generation_config.json can hold it
            own["sprint"] = own["sprint"].to_dict()
        super().__init__(**kwargs)
        for key, value in own.items():
            if value is not None:  # unset fields stay unset (and out of generation_config.json)
                setattr(self, key, value)

    @property
    def gen_length(self):
        """The original API's name of `max_new_tokens`."""
        return getattr(self, "max_new_tokens", None)

    @gen_length.setter
    def gen_length(self, value):
        self.max_new_tokens = value

    def validate(self, *args, **kwargs):
        # temperature 0 is greedy here and the sampling fields always shape the confidences, so the base class's
        # "sampling flag without do_sample" complaints do not apply; every other check is ours (check()).
        saved = {key: getattr(self, key, None) for key in ("temperature", "top_k", "top_p", "do_sample")}
        for key in saved:
            setattr(self, key, None)
        try:
            return super().validate(*args, **kwargs)
        finally:
            for key, value in saved.items():
                setattr(self, key, value)

    def check(self, vocab_size: int, max_positions: Optional[int] = None):
        """Raise `ValueError` naming the setting when one is out of range (before any forward runs)."""
        _check_fields(self, vocab_size, max_positions)


# Field -> the original API's name, added to error messages so that either spelling finds the setting.
_ORIGINAL_NAMES = {name: alias for alias, name in ALIASES.items() if alias != "thinking_steps"}


@contextlib.contextmanager
def named_like_the_original():
    """Re-raise a ValueError naming a field also under its original name: "`max_new_tokens` (`gen_length`)"."""
    try:
        yield
    except ValueError as error:
        message = str(error)
        for name, alias in _ORIGINAL_NAMES.items():
            message = message.replace(f"`{name}`", f"`{name}` (`{alias}`)")
        if message == str(error):
            raise
        raise ValueError(message) from None


def _explicit_fields(passed, model_default) -> set:
    """Fields a caller's `generation_config` sets to something other than the model's own defaults."""
    if passed is None:
        return set()
    mine = passed.to_dict()
    theirs = model_default.to_dict() if model_default is not None else {}
    return {key for key, value in mine.items() if value is not None and theirs.get(key) != value}


def resolve_generation_config(model_config, model_generation_config, generation_config=None,
                              overrides: Optional[dict] = None) -> tuple:
    """Merge release defaults <- `model_generation_config` <- `generation_config` <- `overrides` (consumed).

    Returns (resolved config, explicit field names). Unknown overrides are left in `overrides` for the caller to
    report; `None` overrides mean "not given", except `eos_token_id=None` (no EOS) as in transformers.
    """
    overrides = overrides if overrides is not None else {}
    with named_like_the_original():
        return _resolve(model_config, model_generation_config, generation_config, overrides)


def _resolve(model_config, model_generation_config, generation_config, overrides):
    for alias, name in ALIASES.items():
        if alias in overrides:
            value = overrides.pop(alias)
            if name in overrides and overrides[name] is not None and value is not None:
                raise ValueError(f"give `{name}` or its alias `{alias}`, not both.")
            overrides.setdefault(name, value)
            if overrides[name] is None:
                overrides[name] = value
    base = generation_config if generation_config is not None else model_generation_config
    merged = LLaDA2GenerationConfig(**(base.to_dict() if base is not None else {}))
    explicit = _explicit_fields(generation_config, model_generation_config)
    no_eos = "eos_token_id" in overrides and overrides["eos_token_id"] is None
    known = set(DEFAULTS) | set(SPECIAL_IDS) | set(_BASE_FIELDS)
    for key in [k for k in overrides if k in known]:
        value = overrides.pop(key)
        if value is None:
            continue
        if key == "sprint" and isinstance(value, SprintConfig):
            value = value.to_dict()
        setattr(merged, key, value)
        explicit.add(key)
    text_config = model_config.get_text_config()
    for key, default in DEFAULTS.items():
        if getattr(merged, key, None) is None:
            fallback = getattr(text_config, key, None) if key == "block_length" else None
            setattr(merged, key, fallback if fallback is not None else default)
    for key in SPECIAL_IDS:
        if getattr(merged, key, None) is None:
            setattr(merged, key, getattr(text_config, key, None))
    if no_eos:
        merged.eos_token_id = None
    if isinstance(merged.eos_token_id, (list, tuple)):  # transformers allows several; the sampler stops at one
        if len(merged.eos_token_id) != 1:
            raise ValueError(f"`eos_token_id` must be one id (or None), got {merged.eos_token_id!r}.")
        merged.eos_token_id = merged.eos_token_id[0]
    if merged.pad_token_id is None:
        merged.pad_token_id = merged.eos_token_id if merged.eos_token_id is not None else merged.mask_token_id
    if "max_length" not in explicit or "max_new_tokens" in explicit:  # max_new_tokens wins, as in transformers
        merged.max_length = None
    _apply_do_sample(merged)
    merged.check(text_config.vocab_size, text_config.max_position_embeddings)
    if merged.mask_token_id is None:
        raise ValueError("`mask_token_id` is not set: pass `mask_token_id=` (or `mask_id=`) or set it in the "
                         "model config.")
    return merged, explicit


def _apply_do_sample(config):
    """transformers' `do_sample`: False is greedy whatever the temperature; True samples (temperature 1 if unset)."""
    if config.do_sample is None:
        config.do_sample = bool(config.temperature) and config.temperature > 0
        return
    if config.do_sample and not config.temperature:
        config.temperature = 1.0
    if not config.do_sample:
        config.temperature = 0.0


def fit_length(config, explicit: set, name: str, prompt_length: int, limit: int, reserve: int = 0) -> int:
    """The token budget `name` for a prompt of `prompt_length` tokens on a model of `limit` positions, `reserve`
    positions being needed after it. A default is capped at what is left; an explicit value that does not fit, or
    a prompt that leaves nothing, is an error naming the setting."""
    with named_like_the_original():
        return _fit_length(config, explicit, name, prompt_length, limit, reserve)


def _fit_length(config, explicit, name, prompt_length, limit, reserve):
    left = limit - prompt_length - reserve
    if name == "max_new_tokens" and "max_length" in explicit and config.max_length is not None:
        wanted = config.max_length - prompt_length
        if wanted < 1:
            raise ValueError(f"`max_length` ({config.max_length}) leaves no room after the prompt ({prompt_length}).")
        if wanted > left:
            raise ValueError(f"`max_length` ({config.max_length}) exceeds max_position_embeddings={limit}.")
        return wanted
    wanted = getattr(config, name)
    if left < 1:
        raise ValueError(f"the prompt ({prompt_length} tokens{f' + {reserve} for the image' if reserve else ''}) "
                         f"leaves no position for `{name}` (max_position_embeddings={limit}).")
    if wanted <= left:
        return wanted
    if name in explicit:
        extra = f" + {reserve} for the image" if reserve else ""
        raise ValueError(f"`{name}` ({wanted}) + prompt ({prompt_length}{extra}) exceeds "
                         f"max_position_embeddings={limit}.")
    return left


def _either(values) -> str:
    """'a' or 'b' (the accepted values of a choice field, for its error message)."""
    return " or ".join(repr(value) for value in values)


def _check_fields(config, vocab_size, max_positions):
    """Unset fields (None or absent) are not checked: they take their defaults, which are valid."""

    def value_of(name):
        return getattr(config, name, None)

    def positive_int(name):
        value = value_of(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")

    def number(name, low, high=math.inf, low_open=False):
        value = value_of(name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (low_open and value == low) or value > high:
            span = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
            raise ValueError(f"`{name}` must be a finite number in {span}, got {value!r}.")

    for name in ("max_new_tokens", "max_length", "block_length", "steps", "image_steps", "minimal_topk",
                 "num_return_sequences", "thinking_max_new_tokens", "image_height", "image_width",
                 "pixels_per_token"):
        positive_int(name)
    block = value_of("block_length")
    if max_positions is not None and block is not None and block > max_positions:
        raise ValueError(f"`block_length` ({block}) exceeds max_position_embeddings={max_positions}.")
    number("threshold", 0.0, 1.0, low_open=True)
    number("temperature", 0.0)
    number("top_p", 0.0, 1.0, low_open=True)
    for name in ("guidance_scale", "edit_guidance_scale", "image_guidance_scale"):
        number(name, 0.0)
    top_k = value_of("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"`top_k` must be None or an integer >= 0, got {top_k!r}.")
    if value_of("interleaved_text") not in (None, *TEXT_ORDERS):
        raise ValueError(f"`interleaved_text` must be {_either(TEXT_ORDERS)}, got {value_of('interleaved_text')!r}.")
    if value_of("invalid_size") not in (None, *INVALID_SIZE_MODES):
        raise ValueError(f"`invalid_size` must be {_either(INVALID_SIZE_MODES)}, got {value_of('invalid_size')!r}.")
    mode = value_of("generation_mode")
    if mode is not None and mode not in GENERATION_MODES:
        raise ValueError(f"`generation_mode` must be one of {GENERATION_MODES} or None, got {mode!r}.")
    if SprintConfig.from_setting(value_of("sprint")) is not None and value_of("use_block_cache") is False:
        raise ValueError("`sprint` needs `use_block_cache=True` (SPRINT prunes the block cache).")
    for name, off in UNSUPPORTED.items():
        value = value_of(name)
        if value is not None and value is not False and value != off:
            hint = _HINT.get(name, "pass a `logits_processor` for custom logit rules")
            raise ValueError(f"`{name}`={value!r} is not supported by block-diffusion generation ({hint}).")
    for name in SPECIAL_IDS:
        value = value_of(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size):
            raise ValueError(f"`{name}` ({value!r}) is not an id of the vocabulary [0, {vocab_size}).")
    eos = value_of("eos_token_id")
    if eos is not None and eos == value_of("mask_token_id"):
        raise ValueError(f"`eos_token_id` ({eos}) must differ from `mask_token_id`.")


def defaults_for_model(model_config, validate: bool = True, **fields) -> LLaDA2GenerationConfig:
    """The full `generation_config.json` content for a model: every default spelled out, lengths capped at what the
    model can hold (`fields` override; e.g. a small model's image size and guidance scales). `validate=False` skips
    the range checks (a model under construction may not have final ids yet; generate() checks again)."""
    text_config = model_config.get_text_config()
    values = {key: value for key, value in DEFAULTS.items() if value is not None}
    if getattr(model_config, "image_token_offset", None) is None or model_config is text_config:
        values = {key: value for key, value in values.items() if key not in IMAGE_FIELDS}
    values["block_length"] = getattr(text_config, "block_length", None) or 32
    for key in SPECIAL_IDS:
        if getattr(text_config, key, None) is not None:
            values[key] = getattr(text_config, key)
    values.update(fields)
    limit = text_config.max_position_embeddings
    # A length default must leave room for a prompt: keep at most half of the positions for the answer.
    for key in ("max_new_tokens", "thinking_max_new_tokens"):
        if key in values and key not in fields:
            values[key] = min(values[key], max(1, limit // 2))
    config = LLaDA2GenerationConfig(**values)
    if validate:
        config.check(text_config.vocab_size, limit)
    return config


__all__ = ["ALIASES", "DEFAULTS", "GENERATION_MODES", "LLaDA2GenerationConfig", "defaults_for_model", "fit_length",
           "named_like_the_original",
           "resolve_generation_config"]
