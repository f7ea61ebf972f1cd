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
