"""The shapes world (examples/shapes): deterministic datasets split by scene, a closed vocabulary, and an analytic
checker that reads renders exactly and degraded renders almost always."""

import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from examples.shapes.checker import detect, edit_report, read_scene, score_edit, score_t2i
from examples.shapes.dataset import SPLITS, TASKS, build_datasets, split_scenes
from examples.shapes.world import (VOCABULARY, Scene, Shape, all_scenes, caption, changed_attribute, edits,
                                   new_colour_scenes, questions, random_scene, render, words)

# Every 4th scene of the fixed world order: 698 scenes with every colour, shape, position and count.
SAMPLE = all_scenes()[::4]


def degrade(image, rng, sigma=10.0, factor=2):
    """A `factor`x bilinear down-up resize (a blurry generation) plus Gaussian noise of `sigma` / 255."""
    width, height = image.size
    image = image.resize((width // factor, height // factor), Image.BILINEAR).resize((width, height), Image.BILINEAR)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (height, width, 3))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def small():
    return build_datasets(num_scenes=60, seed=3)


def _raw(dataset):
    """Rows with image columns as stored bytes, so equality means byte-identical PNGs."""
    from datasets import Image as ImageFeature

    for name, feature in dataset.features.items():
        if isinstance(feature, ImageFeature):
            dataset = dataset.cast_column(name, ImageFeature(decode=False))
    return dataset.to_list()


def test_world_rules_and_random_scenes():
    world = all_scenes()
    assert len(world) == len(set(world)) == 2790
    rng = random.Random(0)
    assert all(random_scene(rng) in set(world) for _ in range(200))
    assert random_scene(random.Random(5)) == random_scene(random.Random(5))
    assert Scene.from_json(world[-1].to_json()) == world[-1]
    # Canonical order: the same shapes in any order are the same scene, captioned the same way.
    a, b = Shape("red", "circle", "right"), Shape("blue", "square", "left")
    assert Scene((a, b)) == Scene((b, a))
    assert caption(Scene((a, b))) == "a blue square on the left and a red circle on the right"
    for bad in [(a, Shape("red", "square", "top")), (a, Shape("blue", "square", "right")),
                (Shape("teal", "circle", "center"), b), (a, b, Shape("green", "circle", "top")), ()]:
        with pytest.raises(ValueError):
            Scene(bad)


def test_texts_use_exactly_the_vocabulary():
    used = set()
    rng = random.Random(0)
    for scene in all_scenes():
        texts = [caption(scene)] + [t for qa in questions(scene) for t in qa] + [t for t, _ in edits(scene, rng)]
        for text in texts:
            used.update(words(text))
            assert words(text) == text.lower().replace("?", " ?").split(), text  # nothing outside [a-z ?]
    for scene in new_colour_scenes():
        used.update(words(caption(scene)))
    assert used == set(VOCABULARY)


def test_questions_and_edits_are_unambiguous():
    scene = Scene((Shape("red", "circle", "left"), Shape("blue", "circle", "top")))
    asked = dict(questions(scene))
    assert "What colour is the circle?" not in asked  # two circles
    assert asked["What shape is on the left?"] == "circle" and asked["Where is the blue shape?"] == "top"
    assert asked["How many shapes are there?"] == "two"
    for instruction, target in edits(scene, random.Random(1)):
        assert "the red circle" in instruction or "the blue circle" in instruction
        verb = {"make": "colour", "turn": "shape", "move": "position"}[instruction.split()[0]]
        assert changed_attribute(scene, target) == verb
    single = Scene((Shape("green", "triangle", "center"),))
    assert dict(questions(single))["What colour is the triangle?"] == "green"
    kinds = [changed_attribute(single, target) for _, target in edits(single, random.Random(0))]
    assert kinds == ["colour", "shape", "position"]


def test_datasets_are_deterministic_and_split_by_scene(small):
    again = build_datasets(num_scenes=60, seed=3)
    for task in TASKS:
        assert list(small[task]) == list(SPLITS)
        for split in SPLITS:
            assert _raw(small[task][split]) == _raw(again[task][split]), (task, split)
    other = build_datasets(num_scenes=60, seed=4)
    assert small["text-to-image"]["test"]["scene"] != other["text-to-image"]["test"]["scene"]

    by_split = {split: set(small["text-to-image"][split]["scene"]) for split in SPLITS}
    assert [len(by_split[s]) for s in SPLITS] == [48, 6, 6]
    for task in TASKS:
        for split in SPLITS:
            assert set(small[task][split]["scene"]) == by_split[split], (task, split)
    whole = split_scenes(None, seed=0)
    assert sum(map(len, whole.values())) == 2790
    assert len(set().union(*map(set, whole.values()))) == 2790  # disjoint and covering
    assert all(any(len(s.shapes) == 1 for s in whole[split]) for split in SPLITS)  # stratified
    with pytest.raises(ValueError, match="2790"):
        split_scenes(3000)


def test_rows_match_the_collator_and_the_ground_truth(small):
    from transformers_llada_uni.data_collator_llada2_uni import LLaDA2UniDataCollator

    collator = object.__new__(LLaDA2UniDataCollator)  # task_of reads only the row
    for task in TASKS:
        rows = small[task]["validation"]
        assert rows.features[("image" if task != "text-to-image" else "target_image")].__class__.__name__ == "Image"
        for row in rows:
            assert collator.task_of(row, 0) == task
            scene = Scene.from_json(row["scene"])
            if task == "text-to-image":
                assert row["prompt"] == caption(scene)
                assert np.array_equal(np.asarray(row["target_image"]), np.asarray(render(scene)))
            elif task == "understanding":
                assert (row["question"], row["answer"]) in questions(scene)
                assert read_scene(row["image"]) == scene
            else:
                target = Scene.from_json(row["target_scene"])
                assert changed_attribute(scene, target) == row["edit"]
                assert score_edit(scene, target, row["target_image"].convert("RGB"))


def test_checker_reads_clean_renders_exactly():
    for scene in SAMPLE:
        assert read_scene(render(scene)) == scene, scene  # every shape, and nothing else
    assert all(all(score_t2i(render(scene), scene).values()) for scene in SAMPLE[::5])
    assert read_scene(render(SAMPLE[7], size=128)) == SAMPLE[7]  # sizes scale with the image
    assert detect(Image.new("RGB", (48, 48), (245, 245, 240))) == []
    pink = [s for s in new_colour_scenes() if len(s.shapes) == 2][::37]
    assert pink and all(read_scene(render(scene)) == scene for scene in pink)


def test_every_patch_shows_one_whole_shape_or_nothing():
    # The world is built on the tokenizer's 16 px grid: a shape's pixels never leave its cell.
    from examples.shapes.world import CELL, CELLS

    for scene in SAMPLE[::7]:
        pixels = np.asarray(render(scene))
        for s in scene.shapes:
            col, row = CELLS[s.position]
            inside = np.zeros(pixels.shape[:2], bool)
            inside[row * CELL:(row + 1) * CELL, col * CELL:(col + 1) * CELL] = True
            coloured = (pixels != (245, 245, 240)).any(-1)
            assert not (coloured & ~inside & (pixels == pixels[row * CELL + CELL // 2, col * CELL + CELL // 2])
                        .all(-1)).any(), (scene, s)


def test_checker_survives_noise_and_blur():
    rng = np.random.default_rng(0)
    hits = {"color": 0, "shape": 0, "position": 0}
    for scene in SAMPLE:
        score = score_t2i(degrade(render(scene), rng), scene)
        for key in hits:
            hits[key] += score[key]
    accuracy = {key: value / len(SAMPLE) for key, value in hits.items()}
    assert min(accuracy.values()) >= 0.95, accuracy
    # Heavy noise alone speckles shapes with holes (yellow pixels in orange, background in anything): filled.
    noisy = [all(score_t2i(degrade(render(s), rng, sigma=30, factor=1), s).values()) for s in SAMPLE[::4]]
    assert np.mean(noisy) >= 0.95


def test_checker_scores_wrong_images_wrong():
    rng = random.Random(0)
    key = {"colour": "color", "shape": "shape", "position": "position"}
    for scene in SAMPLE[::4]:
        for _, wrong in edits(scene, rng):
            attribute = changed_attribute(scene, wrong)
            score = score_t2i(render(wrong), scene)
            assert not score[key[attribute]], (scene, wrong)
            if attribute != "colour":  # a missing colour fails all three; otherwise only the changed attribute
                assert all(score[k] for a, k in key.items() if a != attribute), (scene, wrong)
    blank = Image.new("RGB", (48, 48), (245, 245, 240))
    assert not any(score_t2i(blank, SAMPLE[0]).values())


def test_edit_scoring_accepts_the_edit_and_rejects_the_source():
    rng = random.Random(0)
    for scene in SAMPLE[::8]:
        done = edits(scene, rng)
        for index, (_, target) in enumerate(done):
            assert score_edit(scene, target, render(target))
            assert edit_report(scene, target, render(scene)) == {"changed": False, "kept": True}
            assert not score_edit(scene, target, render(scene))
            other = done[(index + 1) % len(done)][1]  # a different edit of the same scene
            assert not score_edit(scene, target, render(other))
    with pytest.raises(ValueError):
        score_edit(SAMPLE[0], SAMPLE[0], render(SAMPLE[0]))


def test_cli_writes_loadable_datasets(tmp_path):
    from datasets import load_from_disk

    script = REPO_ROOT / "examples" / "shapes" / "dataset.py"
    result = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "data"), "--num-scenes", "10"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "text-to-image: train 8, validation 1, test 1 rows" in result.stdout
    assert len(load_from_disk(str(tmp_path / "data" / "editing"))["train"]) == 24
    result = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "more"), "--num-scenes", "5000"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "2790" in result.stderr and "Traceback" not in result.stderr
