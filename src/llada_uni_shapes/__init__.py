"""The tiny LLaDA2.0-Uni trained on the shapes world (examples/shapes), shipped inside the package.

It is the default model of the `llada-uni` command, so drawing, answering and editing work offline right after
installation. `model_path()` is its converted folder: `LLaDA2UniPipeline.from_pretrained(model_path())` loads it.
How it was trained and how well it does: docs/shapes.md.
"""

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"


def model_path() -> Path:
    """The shipped model's folder; a clear error when this installation lacks it."""
    if not (MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the shapes model is not installed at {MODEL_DIR}; reinstall llada-uni, or build it "
                                "with `python examples/shapes/build.py --out DIR` and pass that folder.")
    return MODEL_DIR


__all__ = ["MODEL_DIR", "model_path"]
