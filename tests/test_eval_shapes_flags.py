"""benchmarks/eval_shapes.py --dtype / --no-block-cache / --vision-float32 on the shipped shapes model (one scene)."""

import json

import torch

from conftest import REPO_ROOT

SHAPES = REPO_ROOT / "src" / "llada_uni_shapes" / "model"


def test_bf16_without_the_cache_reaches_every_component(capsys, monkeypatch):
    from benchmarks import eval_shapes

    seen = {}

    def spy(pipe, *args):  # the first task: record what the loaded pipeline looks like, then score as usual
        seen["dtypes"] = {name: {p.dtype for p in part.parameters()} for name, part in pipe.components.items()
                          if hasattr(part, "parameters")}
        seen["vision"] = {p.dtype for p in pipe.mllm.vqmodel.parameters()}
        seen["cache"] = pipe.mllm.generation_config.use_block_cache
        return original(pipe, *args)

    original = eval_shapes.evaluate_t2i
    monkeypatch.setattr(eval_shapes, "evaluate_t2i", spy)
    assert eval_shapes.main(["--model", str(SHAPES), "--limit", "1", "--dtype", "bfloat16", "--no-block-cache",
                             "--no-family"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dtype"] == "bfloat16" and summary["block_cache"] is False and "vision_dtype" not in summary
    assert seen["cache"] is False and all(kinds == {torch.bfloat16} for kinds in seen["dtypes"].values())

    assert eval_shapes.main(["--model", str(SHAPES), "--limit", "1", "--dtype", "bfloat16", "--vision-float32",
                             "--no-family"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["vision_dtype"] == "float32" and summary["block_cache"] is True
    assert seen["cache"] is True and seen["vision"] == {torch.float32}
