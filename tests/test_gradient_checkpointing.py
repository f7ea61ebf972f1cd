"""Gradient checkpointing with the stock `Trainer` from the very first step, for every experts backend.

The grouped-matmul autograd probe (`_grouped_mm_has_backward`) runs once per process, on the first forward that needs
expert gradients: under gradient checkpointing that is inside a checkpointed layer, where it once saved tensors that
the recomputation did not (CheckpointError "87 vs 84"). Its cache makes any later run in the same process pass, so
each case trains in a fresh interpreter."""

import json
import subprocess
import sys

import pytest

from conftest import offline_env, tiny_config_kwargs

_SCRIPT = """
import json, math, sys
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM
from transformers_llada_uni import modeling_llada2_moe as moe

backend, reentrant, no_backward, config, output = sys.argv[1:]
if no_backward == "1":  # a torch build whose grouped_mm has no backward: the probe must say so, auto takes the loop
    forward = F.grouped_mm

    def forward_only(rows, *args, **kwargs):
        if rows.requires_grad:
            raise RuntimeError("grouped_mm: no backward here")
        return forward(rows, *args, **kwargs)

    F.grouped_mm = forward_only
assert moe._GROUPED_MM_BACKWARD == {}, "the probe ran before training: the case tests nothing"
torch.manual_seed(0)
model = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**json.loads(config)))
model.set_experts_backend(backend)
generator = torch.Generator().manual_seed(0)
rows = [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(0, 120, (4, 8), generator=generator)]
args = TrainingArguments(
    output_dir=output, per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2, logging_steps=1,
    save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": reentrant == "1"},
)
before = model.model.layers[1].mlp.experts.gate_up_proj.detach().clone()
trainer = Trainer(model=model, args=args, train_dataset=rows)
trainer.train()
losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
assert trainer.state.global_step == 2 and len(losses) == 2 and all(map(math.isfinite, losses)), losses
assert not torch.equal(model.model.layers[1].mlp.experts.gate_up_proj, before)  # expert gradients flowed
probed = moe._GROUPED_MM_BACKWARD
if backend == "auto":  # probed inside the checkpointed forward (reentrant: in the recomputation, during backward)
    assert list(probed) == [("cpu", torch.float32)], probed
    assert probed[("cpu", torch.float32)] is (no_backward != "1"), probed
else:  # a forced backend never asks
    assert probed == {}, probed
print("OK")
"""


@pytest.mark.parametrize("backend, reentrant, no_backward", [
    ("auto", False, False),  # the Trainer's default checkpointing (non-reentrant) and the failing case
    ("grouped_mm", False, False),
    ("loop", False, False),
    ("auto", False, True),  # the probe's fallback, decided inside the checkpointed forward
    ("auto", True, False),
])
def test_trainer_gradient_checkpointing_first_steps(tmp_path, backend, reentrant, no_backward):
    env = offline_env()
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    config = json.dumps(tiny_config_kwargs(block_length=4))
    command = [sys.executable, "-c", _SCRIPT, backend, str(int(reentrant)), str(int(no_backward)), config,
               str(tmp_path / "run")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip().splitlines()[-1] == "OK"
