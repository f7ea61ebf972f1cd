"""examples/shapes/build.py's stage bookkeeping: trained stages are saved, --resume and --stages load them instead of
training again, and a stage whose inputs were never trained stops with a clear message."""

import pytest
import torch

from examples.shapes.build import Stages


def _stage(stages, name, module, value):
    calls = []

    def train():
        calls.append(name)
        with torch.no_grad():
            module.weight.fill_(value)
        return {"value": value}

    return stages.run(name, {"m": module}, train), calls


def test_stages_save_load_and_skip(tmp_path):
    first = Stages(tmp_path, ["tokenizer", "vae"], resume=False, log=lambda _: None)
    module = torch.nn.Linear(2, 2)
    assert _stage(first, "tokenizer", module, 1.0) == ({"value": 1.0}, ["tokenizer"])
    assert (tmp_path / "tokenizer.pt").is_file()
    # Not selected and never trained: skipped, not ready.
    assert _stage(first, "decoder", torch.nn.Linear(2, 2), 2.0) == (None, [])
    assert first.ready == {"tokenizer"}

    # A later run that trains only the LLM loads the tokenizer from disk.
    later = Stages(tmp_path, ["llm"], resume=False, log=lambda _: None)
    fresh = torch.nn.Linear(2, 2)
    assert _stage(later, "tokenizer", fresh, 5.0) == ({"value": 1.0}, [])
    assert torch.all(fresh.weight == 1.0)
    assert _stage(later, "llm", torch.nn.Linear(2, 2), 3.0)[1] == ["llm"]

    # --resume does not retrain a selected stage that is saved; without it, it does.
    resumed = Stages(tmp_path, ["tokenizer"], resume=True, log=lambda _: None)
    assert _stage(resumed, "tokenizer", torch.nn.Linear(2, 2), 9.0)[1] == []
    again = Stages(tmp_path, ["tokenizer"], resume=False, log=lambda _: None)
    assert _stage(again, "tokenizer", torch.nn.Linear(2, 2), 9.0)[1] == ["tokenizer"]


def test_stage_without_its_inputs_stops(tmp_path):
    stages = Stages(tmp_path, ["decoder"], resume=False, log=lambda _: None)
    with pytest.raises(SystemExit, match="needs \\['tokenizer', 'vae'\\]"):
        _stage(stages, "decoder", torch.nn.Linear(2, 2), 1.0)


def test_seeding_from_the_shipped_model_rebuilds_it(tmp_path):
    """`--start-from` on the shipped folder (its vocabulary grown by the newer tasks' words), then a run that trains
    nothing: every stage loads from the seeded files and the folder written holds the shipped weights."""
    import json

    from safetensors.torch import load_file

    from examples.shapes.build import LLM_PHASES, STAGES, build
    from examples.shapes.factory import build_tokenizer
    from examples.shapes.world import EXTRA_WORDS, VOCABULARY
    from llada_uni_shapes import model_path

    shipped = model_path()
    # The shipped model is the recipe's last stage: every stage of build.py has its training time in the summary.
    assert list(json.loads((shipped / "training_summary.json").read_text())["timings_s"])[: len(STAGES)] == list(STAGES)
    out, work = tmp_path / "out", tmp_path / "work"
    summary = build(out, stages=[], resume=True, work=work, start_from=shipped, log=lambda _: None)
    assert set(summary["timings_s"]) >= set(STAGES)
    for name in ("model.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        want, got = load_file(shipped / name), load_file(out / name)
        assert want.keys() == got.keys()
        assert all(torch.equal(want[key], got[key]) for key in want)
    # A cycle before the vocabulary grew holds the final LLM without the new words' rows.
    first_grown = next(name for name, phase in LLM_PHASES.items() if "family" in phase)
    earlier = STAGES[STAGES.index(first_grown) - 1]
    rows = {name: torch.load(work / f"{name}.pt", weights_only=True)["state"]["model"]
            for name in (earlier, first_grown)}
    offset = json.loads((shipped / "config.json").read_text())["image_token_offset"]  # the grown text vocabulary
    base = len(build_tokenizer(VOCABULARY))
    for key in ("model.word_embeddings.weight", "lm_head.weight"):
        codebook = rows[first_grown][key].shape[0] - offset
        assert rows[earlier][key].shape[0] == base + codebook
        assert rows[first_grown][key].shape[0] == base + len(EXTRA_WORDS) + codebook
        assert torch.equal(rows[earlier][key][:base], rows[first_grown][key][:base])
        assert torch.equal(rows[earlier][key][-codebook:], rows[first_grown][key][-codebook:])
