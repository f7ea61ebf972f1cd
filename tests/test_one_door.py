"""One door for generation, on the shipped shapes model with its defaults only: every documented call runs, the
pipeline and the model's convenience methods agree, settings (SPRINT included) reach the image path, and
transformers' / peft's own entry points work with the plugin not importable."""

import shutil

import numpy as np
import pytest

from conftest import run_without_plugin
from llada_uni_shapes import model_path


@pytest.fixture(scope="module")
def pipe():
    from diffusers_llada_uni import LLaDA2UniPipeline

    pipe = LLaDA2UniPipeline.from_pretrained(model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def scene():
    from examples.shapes.world import Scene, Shape, render

    return render(Scene(shapes=(Shape("red", "circle", "left"),)))


def test_every_documented_call_runs_with_defaults(pipe, scene):
    from PIL import Image

    image = pipe("a red circle on the left").images[0]
    assert isinstance(image, Image.Image) and image.size == (48, 48)
    assert pipe(image=scene, question="What colour is the circle?").text == ["red"]
    assert pipe(image=scene, instruction="make the circle blue").images[0].size == (48, 48)
    thought = pipe("a red circle on the left", thinking=True)
    assert len(thought.text) == 1 and thought.images[0].size == (48, 48)
    model, processor = pipe.mllm, pipe.processor
    out = model.generate(**processor(text="What colour is the circle?", images=scene))
    assert processor.decode(out[0, -2:], skip_special_tokens=True).strip() == "red"
    assert model.understand_image(image=scene, question="What colour is the circle?", processor=processor) == "red"
    assert len(model.edit_image(image=scene, instruction="make the circle blue", processor=processor)["token_ids"]) == 9


def test_model_edit_equals_the_pipeline_edit(pipe, scene):
    from examples.shapes.world import Scene, Shape, render

    other = render(Scene(shapes=(Shape("green", "square", "top"),)))
    instructions = ["make the circle blue", "make the square red"]
    out = pipe(image=[scene, other], instruction=instructions, output_type="tokens")  # one batch
    for source, text, tokens in zip([scene, other], instructions, out.image_tokens):
        direct = pipe.mllm.edit_image(image=source, instruction=text, processor=pipe.processor)
        assert tokens["token_ids"].tolist() == direct["token_ids"]
    drawn = pipe("a red circle on the left", output_type="tokens").image_tokens[0]["token_ids"].tolist()
    assert drawn == pipe.mllm.generate_image("a red circle on the left", processor=pipe.processor)["token_ids"]


def count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_sprint_from_the_generation_config_reaches_the_image_path(pipe):
    from transformers_llada_uni import LLaDA2GenerationConfig

    prompts = ["a red circle on the left", "a blue square at the top", "a green triangle on the right"]
    calls, handle = count_forwards(pipe.mllm)
    try:
        exact = pipe(prompts, output_type="tokens", image_steps=9, threshold=1.0)
        exact_count = len(calls)
        calls.clear()
        settings = LLaDA2GenerationConfig(**pipe.mllm.generation_config.to_dict())
        settings.sprint = {"keep_ratio": 0.5, "threshold": 0.3}
        fast = pipe(prompts, output_type="tokens", generation_config=settings, image_steps=9, threshold=1.0)
        sprint_count = len(calls)
    finally:
        handle.remove()
    assert sprint_count < exact_count
    assert [t["token_ids"].tolist() for t in exact.image_tokens] != [] and len(fast.image_tokens) == 3


def test_an_interrupting_callback_leaves_the_next_call_normal(pipe):
    seen = []

    def stop(pipeline, step, timestep, tensors):
        seen.append(step)
        pipeline._interrupt = True
        return tensors

    pipe("a red circle on the left", decoder="normal", num_inference_steps=3, callback_on_step_end=stop)
    assert seen == [0]
    later = []
    pipe("a red circle on the left", decoder="normal", num_inference_steps=3,
         callback_on_step_end=lambda p, i, t, tensors: later.append(i) or tensors)
    assert later == [0, 1, 2]


def test_pipeline_settings_are_checked_before_any_model_runs(pipe):
    calls, handle = count_forwards(pipe.mllm)
    try:
        with pytest.raises(ValueError, match="threshold"):
            pipe("a red circle", threshold=2.0)
        with pytest.raises(ValueError, match="frobnicate"):
            pipe("a red circle", frobnicate=1)
        with pytest.raises(ValueError, match="max_new_tokens"):
            pipe(image=np.zeros((48, 48, 3), np.uint8), question="What colour?", max_new_tokens=100_000)
    finally:
        handle.remove()
    assert not calls


def test_transformers_and_peft_entry_points_without_the_plugin(tmp_path):
    folder = tmp_path / "shapes"
    shutil.copytree(model_path(), folder, symlinks=False)  # real files: what a downloaded repo holds
    run_without_plugin(f"""
        import torch
        from PIL import Image, ImageDraw
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation import SuppressTokensLogitsProcessor
        from peft import LoraConfig, get_peft_model

        folder = {str(folder)!r}
        picture = Image.new("RGB", (48, 48), (255, 255, 255))
        ImageDraw.Draw(picture).ellipse((2, 14, 18, 30), fill=(220, 40, 40))
        chat = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
        answer = chat(images=picture, text="What colour is the circle?")[0]["generated_text"]
        assert answer.endswith("red"), answer

        text = pipeline("text-generation", model=folder, trust_remote_code=True)
        prompt = "<role>HUMAN</role>What colour is the circle?<role>ASSISTANT</role>"
        assert text(prompt, max_new_tokens=16)[0]["generated_text"].startswith(prompt)

        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        rows = model.generate(ids, do_sample=True, num_return_sequences=3, max_new_tokens=16, eos_token_id=None,
                              generator=torch.Generator().manual_seed(0))
        assert rows.shape == (3, ids.shape[1] + 16), rows.shape
        plain = model.generate(ids, max_new_tokens=16, eos_token_id=None)
        banned = int(plain[0, ids.shape[1]])
        kept_out = model.generate(ids, max_new_tokens=16, eos_token_id=None,
                                  logits_processor=LogitsProcessorList([SuppressTokensLogitsProcessor([banned])]))
        assert banned not in kept_out[0, ids.shape[1]:].tolist()

        class Enough(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.ones(input_ids.shape[0], dtype=torch.bool)

        short = model.generate(ids, max_new_tokens=64, eos_token_id=None,
                               stopping_criteria=StoppingCriteriaList([Enough()]))
        assert short.shape[1] < ids.shape[1] + 64, short.shape

        lora = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["query_key_value"]))
        optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1)
        batch = torch.randint(0, 50, (2, 16))
        loss = lora(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        assert lora.generate(input_ids=ids, max_new_tokens=4).shape[0] == 1
        print("ok")
    """)


def test_the_llm_stage_shows_a_progress_bar(pipe):
    import io

    shown = io.StringIO()
    pipe.set_progress_bar_config(file=shown)
    try:
        pipe(image=np.zeros((48, 48, 3), np.uint8), question="What colour is the circle?")
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "LLM denoising steps" in shown.getvalue()
    quiet = io.StringIO()
    pipe.set_progress_bar_config(disable=True, file=quiet)
    pipe(image=np.zeros((48, 48, 3), np.uint8), question="What colour is the circle?")
    assert quiet.getvalue() == ""
