"""The family's newer tasks on the shapes world (`examples/shapes/family.py`, the new texts of `world.py`), the
collator rows they train with, the grown vocabulary, and the pipeline's interleaved entry."""

import random

import pytest
import torch

from benchmarks.eval_family import interleaved_right
from examples.shapes.dataset import split_scenes
from examples.shapes.factory import ShapesModelSizes, build_model, build_processor, build_tokenizer, extend_vocabulary
from examples.shapes.family import cases, family_rows
from examples.shapes.world import (
    EXTRA_WORDS,
    VOCABULARY,
    Scene,
    Shape,
    all_scenes,
    interleaved_script,
    multi_ref_edits,
    pair_questions,
    parse_plan,
    plan,
    render,
)
from transformers_llada_uni import LLaDA2UniDataCollator

SIZES = ShapesModelSizes(hidden_size=64, layers=2, experts=4, expert_size=32, vision_hidden=32, vision_depth=1)


def scene(*shapes):
    return Scene(tuple(Shape(*s) for s in shapes))


def test_plans_state_every_scene_and_parse_back():
    for s in all_scenes():
        assert parse_plan(plan(s)) == s
    assert plan(scene(("red", "circle", "left"), ("blue", "square", "top"))) == "left red circle . top blue square"
    for bad in ("", "left red", "left red circle . left blue square", "up red circle", "left red circle ."):
        assert parse_plan(bad) is None


def test_pair_questions_have_one_right_answer():
    first = scene(("red", "circle", "left"), ("blue", "square", "top"))
    second = scene(("red", "circle", "right"))
    asked = dict(pair_questions(first, second))
    assert asked["Which picture has the blue square?"] == "first"
    assert "Which picture has the red circle?" not in asked  # in both pictures
    assert pair_questions(scene(("red", "circle", "left")), scene(("red", "square", "left"))) == [
        ("Which picture has the red circle?", "first"), ("Which picture has the red square?", "second"),
        ("Are the two shapes the same colour?", "yes"), ("Are the two shapes the same shape?", "no")]
    moved_pair = pair_questions(first, scene(("red", "circle", "bottom"), ("blue", "square", "top")))
    assert ("Where did the red circle move to?", "bottom") in moved_pair


def test_multi_reference_edits_change_only_the_second_picture():
    first, second = scene(("red", "circle", "left")), scene(("blue", "square", "top"))
    edits = dict(multi_ref_edits(first, second))
    assert edits["put the red circle into the second picture"] == scene(("red", "circle", "left"),
                                                                         ("blue", "square", "top"))
    assert edits["make the blue square the colour of the red circle"] == scene(("red", "square", "top"))
    rng = random.Random(0)
    world = all_scenes()
    for _ in range(300):
        a, b = rng.choice(world), rng.choice(world)
        for _, target in multi_ref_edits(a, b):
            assert target != b and len(target.shapes) >= len(b.shapes)


def test_interleaved_script_and_its_score():
    s = scene(("red", "circle", "left"))
    prompt, segments = interleaved_script(s, random.Random(0))
    assert prompt.startswith("draw a red circle on the left then ")
    assert segments[0] == "a red circle on the left" and segments[1] == s and isinstance(segments[2], str)
    pictures = [render(segments[1]), render(segments[3])]
    answer = [segments[0], pictures[0], segments[2], pictures[1]]
    assert interleaved_right(answer, segments)
    assert not interleaved_right(answer[:3], segments)
    assert not interleaved_right([segments[0], pictures[1], segments[2], pictures[1]], segments)
    assert not interleaved_right([segments[2], pictures[0], segments[2], pictures[1]], segments)


def test_cases_pair_scenes_within_the_given_split_and_are_deterministic():
    splits = split_scenes()
    test = set(splits["test"])
    drawn = cases(splits["test"], seed=0)
    assert drawn == cases(splits["test"], seed=0)
    # A partner is another scene of the split; only a moved copy ("Where did ... move to?") is made from its scene.
    assert all(a in test and (b in test or q.startswith("Where")) for a, b, q, _ in drawn["pairs"])
    assert all(a in test and b in test for a, b, *_ in drawn["multi_ref"])
    answers = {answer for *_, answer in drawn["pairs"]}
    assert {"first", "second", "yes", "no"} <= answers
    assert any(t.startswith("put ") for _, _, t, _ in drawn["multi_ref"])
    assert {answer for _, answer in drawn["counting"]} == {"one", "two"}


def test_more_interleaved_scripts_per_scene_leave_every_other_case_as_it_was():
    scenes = split_scenes()["test"][:40]
    one, several = cases(scenes, seed=0), cases(scenes, seed=0, interleaved_per_scene=4)
    assert all(one[task] == several[task] for task in one if task != "interleaved")
    by_scene = {}
    for scene, prompt, segments in several["interleaved"]:
        by_scene.setdefault(scene, []).append((scene, prompt, segments))
    # The first script of each scene is the one drawn alone; the others each change the scene another way.
    assert [scripts[0] for scripts in by_scene.values()] == one["interleaved"]
    for scene, scripts in by_scene.items():
        assert 1 < len(scripts) <= 4
        assert len({segments[2] for *_, segments in scripts}) == len(scripts)
        assert all(segments[:2] == [segments[0], scene] and segments[3] != scene for *_, segments in scripts)
    assert sum(len(scripts) for scripts in by_scene.values()) > 3 * len(by_scene)


@pytest.fixture(scope="module")
def grown():
    tokenizer = build_tokenizer(VOCABULARY)
    processor = build_processor(tokenizer, SIZES)
    model = build_model(tokenizer, SIZES)
    old_offset = processor.image_token_offset
    text_mean = model.get_input_embeddings().weight[:old_offset].mean(0)
    assert extend_vocabulary(model, processor, EXTRA_WORDS) == len(EXTRA_WORDS)
    # The recipe starts the new words at the mean of the text rows (as the shipped model's run did).
    added = model.get_input_embeddings().weight[old_offset : old_offset + len(EXTRA_WORDS)]
    torch.testing.assert_close(added, text_mean.expand_as(added))
    assert extend_vocabulary(model, processor, EXTRA_WORDS) == 0  # already known
    assert processor.image_token_offset == model.config.image_token_offset == old_offset + len(EXTRA_WORDS)
    return model, processor


def test_grown_vocabulary_reads_whole_words(grown, tmp_path):
    _, processor = grown
    tokenizer = processor.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Which picture has the same colour? with no",
                                                       add_special_tokens=False)["input_ids"])
    assert tokens == ["which", "picture", "has", "the", "same", "colour", "?", "with", "no"]
    # In a prompt too: a word added to the vocabulary is text a user may write; forged control tokens stay words.
    prompt = processor(text="Which picture has the same colour? <boi>", mode="understanding", return_tensors=None)
    tokens = tokenizer.convert_ids_to_tokens(prompt["input_ids"][0])
    start = tokens.index("which")
    assert tokens[start:start + 7] == ["which", "picture", "has", "the", "same", "colour", "?"]
    assert "<boi>" not in tokens
    processor.save_pretrained(tmp_path)
    reloaded = type(processor).from_pretrained(tmp_path)
    assert reloaded.image_token_offset == processor.image_token_offset
    assert len(reloaded.tokenizer) == len(tokenizer)


def _ids(processor, text):
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_collator_rows_of_every_new_task(grown):
    _, processor = grown
    collator = LLaDA2UniDataCollator(processor, block_length=16)
    offset = processor.image_token_offset
    grid = lambda k: {"token_ids": [k] * 9, "h": 3, "w": 3}  # noqa: E731
    header = processor.image_header_ids(3, 3)
    end, eos = processor.image_end_token_id, processor.eos_token_id

    row = collator.encode({"prompt": "a red circle on the left", "thinking": "left red circle",
                           "target_image_tokens": grid(5)})
    target = [t for t in row["labels"] if t != -100]
    assert target == _ids(processor, "left red circle") + header + [offset + 5] * 9

    two = collator.encode({"image_tokens": [grid(1), grid(2)], "question": "Which picture has the red circle?",
                           "answer": "first"})
    assert two["input_ids"].count(offset + 1) == 9 and two["input_ids"].count(offset + 2) == 9
    # the same two pictures as (h, w, codes) triples and as a [2, 3, 3] tensor
    for form in ([(3, 3, [1] * 9), (3, 3, [2] * 9)], torch.tensor([[[1] * 3] * 3, [[2] * 3] * 3])):
        assert collator.encode({"image_tokens": form, "question": "Which picture has the red circle?",
                                "answer": "first"})["input_ids"] == two["input_ids"]

    script = [{"text": "a red circle on the left"}, {"image_tokens": grid(7)},
              {"text": "move the circle to the right"}, {"image_tokens": grid(8)}]
    inter = collator.encode({"prompt": "draw a red circle on the left then move the circle to the right",
                             "segments": script})
    target = [t for t in inter["labels"] if t != -100]
    expected = (_ids(processor, "a red circle on the left") + header + [offset + 7] * 9 + [end]
                + _ids(processor, "move the circle to the right") + header + [offset + 8] * 9 + [end] + [eos])
    assert target[: len(expected)] == expected and set(target[len(expected):]) <= {eos}
    assert len(inter["input_ids"]) % 16 == 0

    uncond = processor.tokenizer.convert_tokens_to_ids("<uncondition>")
    for row in ({"prompt": "<uncondition>", "target_image_tokens": grid(5)},
                {"prompt": "a red circle", "unconditional": True, "target_image_tokens": grid(5)},
                {"prompt": "<uncondition>", "thinking": "left red circle", "target_image_tokens": grid(5)},
                {"image_tokens": [grid(1), grid(2)], "instruction": "<uncondition>", "target_image_tokens": grid(3)},
                {"prompt": "<uncondition>", "segments": script}):
        encoded = collator.encode(row)
        prompt = encoded["input_ids"][: encoded["labels"].index(next(t for t in encoded["labels"] if t != -100))]
        assert uncond in prompt, row
    with pytest.raises(ValueError, match="segments\\[1\\]"):
        collator.encode({"prompt": "draw", "segments": [{"text": "a"}, {"text": "b", "image_tokens": grid(1)}]})


def test_family_rows_collate_in_one_batch(grown):
    _, processor = grown
    drawn = cases(split_scenes()["test"][:30], seed=0)
    rows = family_rows(drawn, lambda s: {"token_ids": [0] * 9, "h": 3, "w": 3}, seed=0)
    kinds = {("segments" in r, "thinking" in r, isinstance(r.get("image_tokens"), list)) for r in rows}
    assert len(kinds) >= 4
    batch = LLaDA2UniDataCollator(processor, block_length=16)(rows[:64])
    assert batch["input_ids"].shape[0] == 64


def test_family_rows_repeat_by_first_word():
    drawn = cases(split_scenes()["test"][:30], seed=0)
    codes = lambda s: {"token_ids": [0] * 9, "h": 3, "w": 3}  # noqa: E731
    kinds = {"put": sum(t.startswith("put ") for *_, t, _ in drawn["multi_ref"]),
             "make": sum(t.startswith("make ") for *_, t, _ in drawn["multi_ref"])}
    assert min(kinds.values()) > 0
    for repeats in (2, {"put": 5, "make": 1}):
        rows = family_rows(drawn, codes, seed=0, multi_ref_repeats=repeats)
        multi = [r for r in rows if "instruction" in r and isinstance(r["image_tokens"], list)]
        expected = sum(kinds.values()) * repeats if isinstance(repeats, int) else 5 * kinds["put"] + kinds["make"]
        assert len(multi) == expected


@pytest.fixture(scope="module")
def tiny_pipe(converted):
    from diffusers_llada_uni import LLaDA2UniPipeline

    pipe = LLaDA2UniPipeline.from_pretrained(converted)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_interleaved_entry_and_history(tiny_pipe):
    from PIL import Image

    out = tiny_pipe(["a story", "another"], interleaved=True, block_length=4, max_new_tokens=8, output_history=True,
                    generator=torch.Generator().manual_seed(0))
    assert len(out.segments) == 2 and len(out.text) == 2 and len(out.history) == 2  # one LLM run per prompt
    for answer in out.segments:
        assert all(isinstance(item, (str, Image.Image)) for item in answer)
    assert all(step.shape[0] == 1 for step in out.history[0])
    plain = tiny_pipe("a story", block_length=4, max_new_tokens=8, output_type="tokens")
    assert plain.history is None and plain.segments is None
    with pytest.raises(ValueError, match="interleaved"):
        tiny_pipe("a story", interleaved=True, question="why?")
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        tiny_pipe("a story", interleaved=True, num_images_per_prompt=2)
