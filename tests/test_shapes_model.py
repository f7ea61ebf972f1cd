"""The shapes model shipped inside the package (`llada_uni_shapes`): it loads offline and really draws, answers and
edits held-out scenes, so a regression in any component (tokenizer, LLM, sampler, decoder, VAE, checker) shows here.
Scored like benchmarks/eval_shapes.py, on the first test-split scenes, with margins below the measured accuracy (on
these scenes the shipped model draws 12/12 in every attribute, answers 144 of 148 questions, does 11 of 12 edits of
clean renders and 9 of 12 of its own drawings; every call is greedy and seeded, so the margins only absorb
numeric differences between machines)."""

import random

import pytest
import torch

from examples.shapes.checker import score_edit, score_t2i
from examples.shapes.dataset import split_scenes
from examples.shapes.world import caption, edits, questions, render

SCENES = split_scenes(seed=0)["test"][:12]


@pytest.fixture(scope="module")
def pipe():
    from diffusers_llada_uni import LLaDA2UniPipeline
    from llada_uni_shapes import model_path

    pipe = LLaDA2UniPipeline.from_pretrained(model_path())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_draws_held_out_captions(pipe):
    images = pipe([caption(s) for s in SCENES], generator=torch.Generator().manual_seed(0)).images
    assert all(image.size == (48, 48) for image in images)
    scores = [score_t2i(image, scene) for image, scene in zip(images, SCENES)]
    for key in ("color", "shape", "position"):
        assert sum(score[key] for score in scores) >= 11, (key, scores)


def test_answers_held_out_questions(pipe):
    cases = [(scene, q, a) for scene in SCENES for q, a in questions(scene)]
    answers = pipe(image=[render(s) for s, _, _ in cases], question=[q for _, q, _ in cases], max_new_tokens=16).text
    right = sum(answer.strip() == truth for answer, (_, _, truth) in zip(answers, cases))
    assert right >= 0.9 * len(cases), list(zip(answers, [c[1:] for c in cases]))


def test_edits_held_out_scenes(pipe):
    rng = random.Random(0)
    cases = [(scene, *edit) for scene in SCENES[:4] for edit in edits(scene, rng)]
    done = [score_edit(scene, target, pipe(image=render(scene), instruction=text,
                                           generator=torch.Generator().manual_seed(0)).images[0])
            for scene, text, target in cases]
    assert sum(done) >= 0.75 * len(cases), done


def test_edits_its_own_drawings(pipe):
    """Draw, then edit the drawing: the LLM then reads the decoder's pictures, not clean renders."""
    scenes = SCENES[4:8]
    drawings = pipe([caption(s) for s in scenes], generator=torch.Generator().manual_seed(0)).images
    rng = random.Random(0)
    cases = [(drawing, scene, *edit) for drawing, scene in zip(drawings, scenes) for edit in edits(scene, rng)]
    edited = pipe(image=[c[0] for c in cases], instruction=[c[2] for c in cases],
                  generator=torch.Generator().manual_seed(0)).images
    done = [score_edit(scene, target, image) for (_, scene, _, target), image in zip(cases, edited)]
    assert sum(done) >= 7, done  # the model before it trained on its own drawings: 40% of such edits


def test_shipped_code_files_are_the_package_code():
    """The shipped folder carries real copies of the remote code (transformers at the root, the diffusers pipeline
    files at the root and in the component folders), so a plain copy loads without the package; none may be stale."""
    from examples.shapes.sync_code import expected_files, stale_files

    assert len(expected_files()) >= 20
    stale = stale_files()
    assert not stale, f"stale copies {stale}: run `python examples/shapes/sync_code.py`"
