"""The untrained tiny LLaDA2.0-Uni of the shapes world: built from scratch with the release's classes, saved as one
converted folder, and run through LLaDA2UniPipeline for all three tasks at the shapes world's 48 px."""

import pytest
import torch

from examples.shapes.factory import build_tokenizer, save_untrained
from examples.shapes.world import VOCABULARY, Scene, Shape, caption, render


def test_factory_model_runs_every_task(tmp_path):
    from diffusers_llada_uni import LLaDA2UniPipeline

    tokenizer = build_tokenizer(VOCABULARY)
    assert "[UNK]" not in tokenizer.convert_ids_to_tokens(tokenizer("What colour is the circle?")["input_ids"])
    folder = save_untrained(tmp_path / "shapes")
    pipe = LLaDA2UniPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    scene = Scene((Shape("red", "circle", "left"),))
    image = render(scene)
    settings = {"num_inference_steps": 2, "generator": torch.Generator().manual_seed(0)}
    drawn = pipe(caption(scene), **settings)  # size and multiplier from the model's own image processor
    assert drawn.images[0].size == (48, 48) and drawn.image_tokens[0]["h"] == 3
    edited = pipe(image=image, instruction="make the circle blue", **settings)
    assert edited.images[0].size == (48, 48) and edited.image_tokens[0]["token_ids"].numel() == 9
    answer = pipe(image=image, question="What colour is the circle?", max_new_tokens=16, block_length=16)
    assert isinstance(answer.text[0], str)


def test_eval_shapes_reports_every_key(tmp_path, capsys):
    import json

    from benchmarks.eval_shapes import main

    folder = save_untrained(tmp_path / "shapes")
    assert main(["--model", str(folder), "--limit", "2", "--split", "validation"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = {"t2i_color", "t2i_shape", "t2i_position", "understanding", "editing"}
    family = {"thinking_t2i", "thinking_consistent", "two_image_understanding", "multi_ref_editing", "multi_ref_put",
              "multi_ref_recolour", "interleaved", "interleaved_structure", "counting", "counting_one_shape"}
    assert set(summary) == scores | family | {"tpf_0.9", "tpf_0.95", "tpf_0.7", "dtype", "block_cache"}
    assert all(0.0 <= summary[k] <= 1.0 for k in scores) and min(summary[f"tpf_{t}"] for t in (0.9, 0.95, 0.7)) > 0
    # Two scenes may hold no case of a kind (e.g. no one-shape scene): such a score is null, never a made-up 0.
    assert all(summary[k] is None or 0.0 <= summary[k] <= 1.0 for k in family)
    assert summary["dtype"] == "float32" and summary["block_cache"] is True


def test_eval_shapes_passes_sprint_to_every_task(tmp_path, capsys, monkeypatch):
    import json

    from benchmarks.eval_shapes import main
    from transformers_llada_uni import generation_llada2_uni

    runs = []

    class CountingSprintRun(generation_llada2_uni.SprintRun):
        def __init__(self, settings, *args, **kwargs):
            runs.append(settings)
            super().__init__(settings, *args, **kwargs)

    monkeypatch.setattr(generation_llada2_uni, "SprintRun", CountingSprintRun)
    folder = save_untrained(tmp_path / "shapes")
    assert main(["--model", str(folder), "--limit", "1", "--split", "validation", "--sprint",
                 "keep_ratio=0.5,strategy=neg_entropy"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sprint"] == {"keep_ratio": 0.5, "strategy": "neg_entropy"}
    # t2i (one batch), understanding (one batch), every edit, and the three tokens-per-forward runs used SPRINT.
    assert len(runs) >= 6 and all(r.keep_ratio == 0.5 and r.strategy == "neg_entropy" for r in runs)


def test_eval_shapes_parses_sprint_booleans_and_id_lists():
    from benchmarks.eval_shapes import parse_sprint

    assert parse_sprint("keep_ratio=0.5,protect_structure=false,protected_token_ids=64;65") == {
        "keep_ratio": 0.5, "protect_structure": False, "protected_token_ids": [64, 65]}
    assert parse_sprint("threshold=none,protect_structure=True") == {"threshold": None, "protect_structure": True}
    with pytest.raises(ValueError, match="protect_structure"):
        parse_sprint("protect_structure=maybe")
