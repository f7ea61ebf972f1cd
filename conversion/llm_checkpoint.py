"""The LLM part of an original LLaDA2 / LLaDA2.0-Uni folder: config, generation config, tokenizer, code, weights."""

import json
import shutil
import sys
from pathlib import Path

import torch

from conversion.checkpoint_io import (
    ConversionError,
    SourceCheckpoint,
    check_written,
    dtype_name,
    plan_shards,
    write_shards,
)
from conversion.llm_fp8 import prepare_llm_fp8
from conversion.llm_weights import build_tensor, dominant_dtype, expected_llm_tensors, plan_llm_weights

# Tokenizer files copied when present (tokenizer_config.json is rewritten, see `_write_tokenizer_config`).
TOKENIZER_FILES = (
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
SPECIAL_TOKENS = {
    "mask_token_id": "<|mask|>",
    "eos_token_id": "<|endoftext|>",
    "bos_token_id": "<|startoftext|>",
}


def special_token_ids(folder: Path, tokens=tuple(SPECIAL_TOKENS.values())) -> dict:
    """{token string: id} of the `tokens` (default: those of `SPECIAL_TOKENS`) that the folder's tokenizer knows."""
    tokens = tuple(tokens)
    found = {}
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises its own exception type
            raise ConversionError(f"cannot read {tokenizer_file}: {exc}") from None
        for token in tokens:
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                found[token] = token_id
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        for token_id, entry in _read_json(config_file).get("added_tokens_decoder", {}).items():
            content = entry.get("content") if isinstance(entry, dict) else None
            if content in tokens:
                found.setdefault(content, int(token_id))
    return found


def build_config(folder: Path, log):
    """Our config from the original `config.json`, with the special ids the config lacks taken from the tokenizer."""
    from transformers_llada_uni import LLaDA2MoeConfig

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"no config.json in {folder}")
    config_dict, _ = LLaDA2MoeConfig.get_config_dict(str(folder))
    model_type = config_dict.get("model_type")
    if model_type not in (None, LLaDA2MoeConfig.model_type):
        raise ConversionError(f"{config_file} has model_type {model_type!r}, expected {LLaDA2MoeConfig.model_type!r}")
    token_ids = special_token_ids(folder)
    filled = {}
    for field, token in SPECIAL_TOKENS.items():
        if config_dict.get(field) is None and token in token_ids:
            filled[field] = token_ids[token]
    # The releases pad with the EOS token; a pad id given by the original config wins.
    if config_dict.get("pad_token_id") is None and "<|endoftext|>" in token_ids:
        filled["pad_token_id"] = token_ids["<|endoftext|>"]
    config_dict.update(filled)
    try:
        config = LLaDA2MoeConfig.from_dict(config_dict)
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"{config_file}: {exc}") from None
    if filled:
        log("ids from the tokenizer: " + ", ".join(f"{k}={v}" for k, v in sorted(filled.items())))
    if config.mask_token_id is None:
        log("note: no mask token id in config.json or the tokenizer; pass mask_token_id to generate()")
    config.architectures = ["LLaDA2MoeForCausalLM"]
    return config


def write_generation_config(config, folder: Path):
    """generation_config.json with the special ids and every sampling default of the release (temperature 0 =
    greedy), lengths fitted to the model's positions; a Uni config adds the image, editing and thinking settings."""
    from transformers_llada_uni.generation_config_llada2_uni import defaults_for_model

    defaults_for_model(config).save_pretrained(folder)


def copy_present_files(src: Path, dst: Path, names) -> list:
    """Copy those of `names` that exist in `src` into `dst`; returns the copied names."""
    copied = [name for name in names if (src / name).is_file()]
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    return copied


def copy_tokenizer(src: Path, dst: Path, log):
    """Copy the tokenizer files; `tokenizer_config.json` loses any `auto_map` and names the generic fast class."""
    copied = copy_present_files(src, dst, TOKENIZER_FILES)
    config_file = src / "tokenizer_config.json"
    if config_file.is_file():
        _write_tokenizer_config(_read_json(config_file), dst, has_fast=(src / "tokenizer.json").is_file(),
                                token_ids=special_token_ids(src), log=log)
        copied.append("tokenizer_config.json")
    if not copied:
        log(f"note: no tokenizer files in {src}; the output has none")
    return copied


def _write_tokenizer_config(tokenizer_config: dict, dst: Path, *, has_fast: bool, token_ids: dict, log):
    changes = []
    if tokenizer_config.pop("auto_map", None) is not None:
        changes.append("dropped auto_map (remote tokenizer code is not needed)")
    if has_fast and tokenizer_config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        changes.append(f"tokenizer_class {tokenizer_config.get('tokenizer_class')!r} -> 'PreTrainedTokenizerFast'")
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if "<|mask|>" in token_ids and tokenizer_config.get("mask_token") is None:
        tokenizer_config["mask_token"] = "<|mask|>"
        changes.append("mask_token set to '<|mask|>'")
    (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    if changes:
        log("tokenizer_config.json: " + "; ".join(changes))


def save_remote_code(config, dst: Path, model_class=None):
    """Write config.json and copy the code files it points to, so the folder loads with trust_remote_code alone.

    `model_class` defaults to `LLaDA2MoeForCausalLM`; the files of `type(config)`, `model_class` and every file they
    reach through relative imports are copied.
    """
    from transformers.dynamic_module_utils import custom_object_save
    from transformers_llada_uni import LLaDA2GenerationConfig, LLaDA2MoeForCausalLM

    model_class = model_class or LLaDA2MoeForCausalLM
    config.save_pretrained(str(dst))
    for cls in (type(config), model_class):
        custom_object_save(cls, str(dst))  # the module file + every file it reaches through relative imports
    needed = {Path(sys.modules[cls.__module__].__file__).name
              for cls in (type(config), model_class, LLaDA2GenerationConfig)}
    needed |= {value.split(".")[0] + ".py" for value in config.auto_map.values()}
    absent = sorted(name for name in needed if not (dst / name).is_file())
    if absent:
        raise ConversionError(f"the remote code files {', '.join(absent)} were not written")


def plan_weights(planned_sources):
    """`[(targets, source), ...]` -> `{name: (target, source)}` in the given order (names must not repeat)."""
    by_name = {}
    for targets, source in planned_sources:
        for target in targets:
            if target.name in by_name:
                raise ConversionError(f"the tensor {target.name} would be written twice")
            by_name[target.name] = (target, source)
    return by_name


def write_weights(dst: Path, by_name: dict, max_bytes: int, log):
    """Write the planned tensors (`plan_weights`) as shards into `dst`; returns (files, {name: (shape, dtype)}).

    The sources must stay open until this returns: each tensor is read when its shard is built.
    """
    targets = [target for target, _ in by_name.values()]
    total = sum(target.nbytes for target in targets)
    shards = plan_shards([(t.name, t.nbytes) for t in targets], max_bytes)
    log(f"writing {len(targets)} tensors ({total / 1e6:.1f} MB, {dtype_name(dominant_dtype(targets))}) "
        f"in {len(shards)} shard(s)")
    files = write_shards(dst, shards, lambda name: build_tensor(*by_name[name]), total)
    return files, {t.name: (t.shape, t.dtype) for t in targets}


def plan_llm(source, expected, dtype, log):
    """The LLM's `TargetTensor`s for `expected` ({name: shape} of the model's `model.*` / `lm_head.*` tensors)."""
    targets, notes = plan_llm_weights(source.info, expected, dtype)
    for note in notes:
        log(f"note: {note}")
    return targets


def finish_folder(config, src: Path, dst: Path, log, model_class=None):
    """Everything but the weights: config.json + remote code, generation_config.json, tokenizer files."""
    save_remote_code(config, dst, model_class)
    write_generation_config(config, dst)
    copy_tokenizer(src, dst, log)


def convert_llm(src: Path, dst: Path, *, dtype, max_bytes: int, log):
    """Write the converted LLM into the (empty, existing) folder `dst`, verified. Returns the written weight files.

    `dtype` is a floating `torch.dtype` to cast to, or `None` to keep the stored dtypes.
    """
    config = build_config(src, log)
    with SourceCheckpoint(src) as raw_source:
        source = prepare_llm_fp8(config, raw_source, dtype, log)  # sets config.experts_fp8 for kept FP8 experts
        targets = plan_llm(source, expected_llm_tensors(config), dtype, log)
        config.dtype = dominant_dtype(targets)
        files, written = write_weights(dst, plan_weights([(targets, source)]), max_bytes, log)
    finish_folder(config, src, dst, log)
    check_written(dst, written, max_bytes)
    return files


def load_for_verify(folder: Path, model_class):
    """`model_class.from_pretrained(folder)` in the stored dtype (float16 as float32: CPU runs never compute in it);
    raises `ConversionError` unless it loads with no missing (except optional), unexpected or mismatched key."""
    from conversion.llm_weights import OPTIONAL_KEY

    config = _read_json(folder / "config.json")
    stored = getattr(torch, str(config.get("dtype", "float32")), torch.float32)
    load_dtype = torch.float32 if stored == torch.float16 else stored
    try:
        model, info = model_class.from_pretrained(str(folder), dtype=load_dtype, output_loading_info=True)
    except Exception as exc:
        raise ConversionError(f"--verify: loading the output failed: {type(exc).__name__}: {exc}") from None
    problems = [f"{kind}: {', '.join(sorted(keys))}" for kind, keys in (
        ("missing", [k for k in info.get("missing_keys", ()) if not OPTIONAL_KEY.search(k)]),
        ("unexpected", info.get("unexpected_keys", ())),
        ("mismatched", [str(k) for k in info.get("mismatched_keys", ())]),
    ) if keys]
    if problems:
        raise ConversionError("--verify: the output does not load cleanly (" + "; ".join(problems) + ")")
    return model.eval()


def check_forward(model, log):
    """A forward pass on a few tokens must give finite logits of the right shape."""
    vocab_size = model.config.get_text_config().vocab_size
    length = min(8, vocab_size)
    ids = torch.arange(length).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if tuple(logits.shape) != (1, length, vocab_size) or not torch.isfinite(logits).all():
        raise ConversionError(f"--verify: the forward pass gave logits of shape {list(logits.shape)} with "
                              f"{int((~torch.isfinite(logits)).sum())} non-finite values")
    log(f"verified: loads cleanly, forward on {length} tokens gives finite logits")


def verify_llm(folder: Path, log):
    """Load the written folder with `LLaDA2MoeForCausalLM.from_pretrained` and run a short forward (finite logits)."""
    from transformers_llada_uni import LLaDA2MoeForCausalLM

    check_forward(load_for_verify(folder, LLaDA2MoeForCausalLM), log)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc})") from None
