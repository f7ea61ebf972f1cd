"""Fine-tuning with the stock Trainer and PEFT LoRA on the converted tiny LLaDA2.0-Uni (random weights): the collator's
supervision, the loss dropping for understanding and text-to-image, saving / reloading / merging the adapter."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Trainer, TrainingArguments

from transformers_llada_uni import LLaDA2UniForConditionalGeneration, LLaDA2UniProcessor
from transformers_llada_uni.data_collator_llada2_uni import LLaDA2UniDataCollator
from transformers_llada_uni.peft_llada2_uni import check_lora_targets, get_lora_model, lora_config

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}


@pytest.fixture(scope="module")
def processor(converted):
    return LLaDA2UniProcessor.from_pretrained(converted)


def _model(converted, **training):
    model = LLaDA2UniForConditionalGeneration.from_pretrained(converted, dtype=torch.float32)
    model.config.get_text_config().diffusion_training = {"mask_ratio_min": 0.3, "mask_ratio_max": 0.9, **training}
    return model


def _square(colour):
    return Image.new("RGB", (32, 32), COLOURS[colour])


def understanding_rows():
    return [{"image": _square(c), "question": "What colour?", "answer": c} for c in COLOURS]


def t2i_rows():
    rng = np.random.default_rng(0)
    return [{"prompt": f"a {c} square", "target_image_tokens": rng.integers(0, 64, (2, 2))} for c in COLOURS]


def _train(model, collator, rows, tmp_path, steps=40, lr=1e-2):
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=steps, learning_rate=lr,
        logging_steps=1, save_strategy="no", report_to=[], remove_unused_columns=False, use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses


# ---------------------------------------------------------------------------------------------------- the collator


def test_collator_supervises_answers_and_pads_eos_to_the_block(processor):
    collator = LLaDA2UniDataCollator(processor, block_length=8, understanding_image_mode="none")
    rows = [{"image": _square("red"), "question": "What colour?", "answer": "red"},
            {"prompt": "hello", "response": "hi there friend"}]
    batch = collator(rows)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape[0] == 4 and batch["image_grid_thw"].tolist() == [[1, 2, 2]]
    for row in range(2):
        supervised = (labels[row] != -100).nonzero().squeeze(1)
        answer = processor.tokenizer(rows[row].get("answer") or rows[row]["response"],
                                     add_special_tokens=False)["input_ids"]
        start = int(supervised[0])
        assert ids[row, start : start + len(answer)].tolist() == answer
        rest = ids[row, start + len(answer) : int(supervised[-1]) + 1]
        assert (rest == processor.eos_token_id).all() and len(rest) >= 1
        assert (int(supervised[-1]) + 1) % 8 == 0  # EOS up to the end of the block
        assert torch.equal(labels[row][supervised], ids[row][supervised])
        assert mask[row, : int(supervised[-1]) + 1].all() and not mask[row, int(supervised[-1]) + 1 :].any()


def test_collator_image_targets(processor):
    collator = LLaDA2UniDataCollator(processor, image_mode="none")
    codes = torch.tensor([[5, 6], [7, 8]])
    batch = collator([{"prompt": "a cat", "target_image_tokens": codes},
                      {"prompt": "a dog", "target_image": Image.new("RGB", (32, 48))},
                      {"image_tokens": codes, "instruction": "make it red", "target_image_tokens": codes + 1}])
    offset = processor.image_token_offset
    labels = batch["labels"]
    assert labels[0][labels[0] != -100].tolist() == (codes.reshape(-1) + offset).tolist()
    # Pixel targets are placeholders the model fills from pixel_values (48 px tall, 32 wide: 3 x 2 patches of 16).
    assert labels[1][labels[1] != -100].tolist() == [processor.image_start_token_id] * 6
    assert batch["image_grid_thw"].tolist() == [[1, 3, 2]]
    edit = batch["input_ids"][2]
    assert labels[2][labels[2] != -100].tolist() == (codes.reshape(-1) + 1 + offset).tolist()
    assert (edit == offset + 5).sum() == 1 and (edit == offset + 6).sum() == 2  # the source codes in the prompt


@pytest.mark.parametrize(
    "row, match",
    [
        ({"question": "What?", "answer": "red"}, r"row 0 \(understanding\).*image"),
        ({"image": None, "question": "What?", "answer": "red"}, "image"),
        ({"prompt": "x", "response": "   "}, "empty"),
        ({"instruction": "make it red", "image_tokens": [[1]]}, "target_image"),
        ({"prompt": "x", "target_image_tokens": {"token_ids": [1, 2, 3], "h": 2, "w": 2}}, "3 codes for a 2x2"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "assistant"),
        ({"text": "x"}, "prompt"),
    ],
)
def test_collator_errors_name_the_row_and_field(processor, row, match):
    with pytest.raises(ValueError, match=match):
        LLaDA2UniDataCollator(processor)([row])


def test_collator_rejects_too_long_rows(processor):
    with pytest.raises(ValueError, match="row 1: .* exceed max_length=40"):
        LLaDA2UniDataCollator(processor, max_length=40)([{"prompt": "a", "response": "b"},
                                                          {"prompt": "a " * 30, "response": "b"}])


# ---------------------------------------------------------------------------------------------------- LoRA targets


def test_presets_and_unmatched_targets(converted):
    model = _model(converted)
    matched = check_lora_targets(model, lora_config("experts"))
    assert any(name.endswith("attention.query_key_value") for name in matched["modules"])
    assert any(".shared_experts." in name for name in matched["modules"])
    assert not any(name.startswith(("visual", "vqmodel")) for name in matched["modules"])
    assert any(name.endswith("mlp.experts.gate_up_proj") for name in matched["parameters"])
    with pytest.raises(ValueError, match="match nothing.*q_proj"):
        check_lora_targets(model, lora_config(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="match nothing.*experts.w1"):
        check_lora_targets(model, lora_config(target_parameters=["experts.w1"]))
    with pytest.raises(ValueError, match="preset"):
        lora_config("everything")


# ---------------------------------------------------------------------------------------------------- Trainer runs


def test_lora_understanding_trains_saves_reloads_and_merges(converted, processor, tmp_path):
    from peft import PeftModel

    model = get_lora_model(_model(converted), "default", r=8, lora_alpha=16, lora_dropout=0.0)
    frozen = [n for n, p in model.named_parameters() if ("visual" in n or "vqmodel" in n) and p.requires_grad]
    assert not frozen
    collator = LLaDA2UniDataCollator(processor, block_length=8, understanding_image_mode="none")
    _, losses = _train(model, collator, understanding_rows(), tmp_path, steps=40)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses

    model.eval()
    kwargs = {"processor": processor, "gen_length": 8, "block_length": 8, "steps": 8}
    trained = [model.understand_image(image=_square(c), question="What colour?", **kwargs) for c in COLOURS]
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    base = _model(converted).eval()
    before = [base.understand_image(image=_square(c), question="What colour?", **kwargs) for c in COLOURS]
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    again = [reloaded.understand_image(image=_square(c), question="What colour?", **kwargs) for c in COLOURS]
    assert again == trained and trained != before

    batch = collator(understanding_rows())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        unmerged = reloaded(**inputs).logits
        merged_model = reloaded.merge_and_unload()
        merged = merged_model(**inputs).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)


def test_lora_text_to_image_trains_with_expert_adapters(converted, processor, tmp_path):
    model = get_lora_model(_model(converted), "experts", r=8, lora_alpha=16)
    collator = LLaDA2UniDataCollator(processor, block_length=8)
    rows = t2i_rows()
    _, losses = _train(model, collator, rows, tmp_path, steps=40)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    expert_adapters = [p for n, p in model.named_parameters() if ".mlp.experts." in n and "lora_B" in n]
    assert expert_adapters and all(p.abs().sum() > 0 for p in expert_adapters)
