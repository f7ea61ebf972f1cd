"""Refresh the code files of the shipped shapes model (src/llada_uni_shapes/model) from the package sources.

    python examples/shapes/sync_code.py

The shipped folder holds real copies, not links, so that a plain copy of it (or an upload to the Hub) loads without
this package: the transformers remote code at the root, and the diffusers files `hub_layout` lists at the root and
in the component folders. tests/test_shapes_model.py fails, naming this script, when a copy is stale.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

TRANSFORMERS_DIR = REPO_ROOT / "src" / "transformers_llada_uni"
DIFFUSERS_DIR = REPO_ROOT / "src" / "diffusers_llada_uni"
MODEL_DIR = REPO_ROOT / "src" / "llada_uni_shapes" / "model"
# The transformers remote code a saved LLaDA2UniForConditionalGeneration carries (what save_pretrained copies).
TRANSFORMERS_FILES = ("configuration_llada2_uni.py", "generation_config_llada2_uni.py",
                      "generation_interleaved_llada2_uni.py", "generation_llada2_uni.py", "generation_modes_llada2_uni.py",
                      "generation_tasks_llada2_uni.py", "image_processing_llada2_uni.py", "modeling_llada2_moe.py",
                      "modeling_llada2_uni.py", "processing_llada2_uni.py", "prompting_llada2_uni.py",
                      "sprint_llada2_uni.py", "training_llada2_uni.py")


def expected_files(folder: Path = MODEL_DIR) -> dict:
    """{file in the shipped folder: package source it must equal}."""
    from diffusers_llada_uni.hub_files import code_file_targets
    from diffusers_llada_uni.hub_layout import LIBRARIES

    files = {folder / name: TRANSFORMERS_DIR / name for name in TRANSFORMERS_FILES}
    for relative, name in code_file_targets(set(LIBRARIES)).items():
        files[folder / relative] = DIFFUSERS_DIR / name
    return files


def stale_files(folder: Path = MODEL_DIR) -> list:
    return [str(target.relative_to(folder)) for target, source in expected_files(folder).items()
            if not target.is_file() or target.is_symlink() or target.read_bytes() != source.read_bytes()]


def main() -> int:
    from diffusers_llada_uni.hub_files import copy_atomically

    for target, source in expected_files().items():
        if target.is_symlink():
            target.unlink()
        copy_atomically(source, target)
    print(f"synced {len(expected_files())} code files into {MODEL_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
