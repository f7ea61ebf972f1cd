"""examples/shapes/tutorial.py --quick on an untrained shapes folder: every figure of docs/tutorial.md and its JSON of
numbers are written, with sensible sizes and keys (the pictures themselves are meaningless without training)."""

import json
import subprocess
import sys

from PIL import Image

from conftest import REPO_ROOT, offline_env
from examples.shapes.factory import save_untrained

FIGURES = ("tokens", "attention_mask", "trajectory", "decoder_steps", "guidance", "lora_pink")


def test_tutorial_quick_writes_every_figure_and_number(tmp_path):
    folder = save_untrained(tmp_path / "shapes")
    out = tmp_path / "figures"
    env = {**offline_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "shapes" / "tutorial.py"), "--model", str(folder), "--out",
         str(out), "--quick", "--threads", "1"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in FIGURES:
        with Image.open(out / f"{name}.png") as image:
            assert image.mode == "RGB"
            # Every figure holds at least one 192 px (4x) shapes image or an equally large grid.
            assert 192 <= image.width <= 4000 and 192 <= image.height <= 2000, (name, image.size)
    numbers = json.loads((out / "tutorial.json").read_text())
    assert {"tokens", "attention_mask", "trajectory", "decoder_steps", "guidance", "lora", "timings_s"} <= set(numbers)
    assert numbers["quick"] is True
    assert numbers["tokens"]["grid"] == [3, 3]
    for scene in numbers["tokens"]["scenes"]:
        assert len(scene["codes"]) == 9 and all(0 <= c < numbers["tokens"]["codebook_size"] for c in scene["codes"])
    mask = numbers["attention_mask"]
    assert mask["canvas"] % mask["block_length"] == 0 and mask["canvas"] >= mask["prompt_tokens"] + 9
    trajectory = numbers["trajectory"]
    assert len(trajectory["committed_at"]) == 9 and trajectory["forward_passes"] >= 1
    assert all(step is None or 1 <= step <= trajectory["forward_passes"] for step in trajectory["committed_at"])
    assert numbers["decoder_steps"]["turbo"]["shown"] == list(range(1, 9))
    guidance = numbers["guidance"]
    assert set(guidance["cfg"]) == {"1", "2", "4"} and set(guidance["threshold"]) == {"0.95", "0.9", "0.7"}
    for entry in [*guidance["cfg"].values(), *guidance["threshold"].values()]:
        assert entry["forward_passes"] >= 1 and 0.0 <= entry["code_accuracy"] <= 1.0
    lora = numbers["lora"]
    assert lora["steps"] >= 1 and lora["rows"] > 0 and lora["trainable_parameters"] > 0
    for report in (lora["before"], lora["after"]):
        assert {"pink_t2i_colour", "pink_colour_answers", "ordinary_t2i_colour", "ordinary_colour_answers",
                "answer", "pink_image_read_as"} <= set(report)
    assert numbers["timings_s"]["total"] < 60
