"""The LLM's training rows (examples/shapes/train_llm.task_rows) and the round-tripped source codes they can use."""

import torch

from examples.shapes.dataset import split_scenes
from examples.shapes.factory import ShapesModelSizes, build_model, build_pixel_side, build_processor, build_tokenizer
from examples.shapes.roundtrip import roundtrip_codes
from examples.shapes.train_llm import task_rows
from examples.shapes.world import VOCABULARY, WHERE

SCENES = split_scenes(seed=0)["train"][:12]


_SEEN = {}


def _codes(scene):  # a fake grid per scene (sources and edit targets), numbered in order of first use
    return {"token_ids": torch.full((9,), _SEEN.setdefault(scene, len(_SEEN)) % 50), "h": 3, "w": 3}


def _drawn(scene):
    return {"token_ids": torch.full((9,), 60), "h": 3, "w": 3}


def _plain(rows):
    return [{key: {**value, "token_ids": value["token_ids"].tolist()} if isinstance(value, dict) else value
             for key, value in row.items()} for row in rows]


def _is_lookup(row):
    return "question" in row and any(place in row["question"] for place in WHERE.values())


def test_lookup_repeats_multiply_only_the_place_questions():
    plain = task_rows(SCENES, _codes, seed=1)
    tripled = task_rows(SCENES, _codes, lookup_repeats=3, seed=1)
    lookups = sum(map(_is_lookup, plain))
    assert lookups > 0
    assert sum(map(_is_lookup, tripled)) == 3 * lookups
    others = [row for row in plain if not _is_lookup(row)]
    assert len(tripled) - sum(map(_is_lookup, tripled)) == len(others)


def test_roundtrip_sources_replace_only_question_and_edit_sources():
    clean = task_rows(SCENES, _codes, seed=2)
    assert _plain(task_rows(SCENES, _codes, roundtrip_of=_drawn, roundtrip_rate=0.0, seed=2)) == _plain(clean)
    drawn = task_rows(SCENES, _codes, roundtrip_of=_drawn, roundtrip_rate=1.0, seed=2)
    assert len(drawn) == len(clean)
    for row in drawn:
        if "image_tokens" in row:  # understanding and editing sources all come from the drawings
            assert int(row["image_tokens"]["token_ids"][0]) == 60
        if "target_image_tokens" in row:  # what the model must write stays the clean codes
            assert int(row["target_image_tokens"]["token_ids"][0]) != 60
    half = task_rows(SCENES, _codes, roundtrip_of=_drawn, roundtrip_rate=0.5, seed=2)
    sources = [int(row["image_tokens"]["token_ids"][0]) == 60 for row in half if "image_tokens" in row]
    assert 0.3 < sum(sources) / len(sources) < 0.7


def test_roundtrip_codes_decode_and_read_back_every_scene():
    sizes = ShapesModelSizes()
    tokenizer = build_tokenizer(VOCABULARY)
    processor = build_processor(tokenizer, sizes)
    model, pixel = build_model(tokenizer, sizes, seed=0).eval(), build_pixel_side(sizes, seed=0)
    grids = {scene: {"token_ids": torch.randint(0, sizes.codebook_size, (9,)), "h": 3, "w": 3} for scene in SCENES}
    first = roundtrip_codes(model, processor, pixel, grids, SCENES[:5], batch_size=2, seed=0)
    assert list(first) == SCENES[:5]
    for codes in first.values():
        assert codes["h"] == codes["w"] == 3
        assert codes["token_ids"].shape == (9,)
        assert 0 <= int(codes["token_ids"].min()) and int(codes["token_ids"].max()) < sizes.codebook_size
    again = roundtrip_codes(model, processor, pixel, grids, SCENES[:5], batch_size=2, seed=0)  # seeded noise
    assert all(torch.equal(first[s]["token_ids"], again[s]["token_ids"]) for s in SCENES[:5])
