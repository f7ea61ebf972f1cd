"""`--original` as a Hub repo id: fetch only the files the selected components need into the Hugging Face cache.

Patterns name root files explicitly (`model*.safetensors`, not `*.safetensors`, which would also match every
subfolder's weights), and each selected component's own folder or file.
"""

import os
from pathlib import Path

from conversion.checkpoint_io import ConversionError

# Root files of an original snapshot that conversion reads (config, LLM weights, tokenizer, the card's metadata).
ROOT_PATTERNS = ("config.json", "generation_config.json", "model*.safetensors", "model*.safetensors.index.json",
                 "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                 "chat_template*", "README.md")


def looks_like_repo_id(text: str) -> bool:
    parts = str(text).split("/")
    return len(parts) == 2 and all(parts) and not str(text).startswith((".", "~")) and not os.path.exists(text)


def component_patterns(paths) -> list:
    """`image_tokenizer` -> `image_tokenizer/*`; a file path stays a file path."""
    return [path if Path(path).suffix else f"{path}/*" for path in paths]


def fetch_original(repo_id: str, paths, **hub_kwargs) -> Path:
    """Download (or, offline, find in the cache) the root files and `paths` of `repo_id`; returns the snapshot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = list(ROOT_PATTERNS) + component_patterns(paths)
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns,
                                   **{key: value for key, value in hub_kwargs.items() if value is not None})
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError) as exc:
        raise ConversionError(f"--original {repo_id}: not a folder, and the Hub repo could not be fetched "
                              f"({exc.__class__.__name__}; offline, it must be in the Hugging Face cache)") from None
    return Path(folder)


__all__ = ["ROOT_PATTERNS", "fetch_original", "looks_like_repo_id"]
