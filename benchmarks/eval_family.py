"""The newer tasks of `benchmarks/eval_shapes.py`: thinking text-to-image, two-picture questions, multi-reference
edits, interleaved generation and counting, on the cases `examples/shapes/family.cases` draws over held-out scenes
(pairs of held-out scenes only). Every score is the analytic checker's reading of pixels or an exact text match."""

import torch

from examples.shapes.checker import read_scene, score_edit, score_t2i
from examples.shapes.family import cases
from examples.shapes.world import caption, parse_plan, render, words

TURBO = {"decoder": "turbo"}


def _share(hits, total):
    return hits / total if total else None  # no case of this kind among the scenes (a small --limit)


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate_thinking(pipe, scenes, batch_size):
    """thinking_t2i: every shape's colour, shape and place right; thinking_consistent: the plan text states the scene
    the picture shows."""
    right = consistent = 0
    for chunk in _chunks(scenes, batch_size):
        out = pipe([caption(s) for s in chunk], thinking=True, generator=torch.Generator().manual_seed(0), **TURBO)
        for scene, image, text in zip(chunk, out.images, out.text):
            scores = score_t2i(image, scene)
            right += int(scores["color"] and scores["shape"] and scores["position"] and scores["count"])
            stated = parse_plan(text)
            consistent += int(stated is not None and stated == read_scene(image))
    return {"thinking_t2i": _share(right, len(scenes)), "thinking_consistent": _share(consistent, len(scenes))}


def evaluate_pairs(pipe, pairs, batch_size):
    correct = 0
    for chunk in _chunks(pairs, batch_size):
        answers = pipe(image=[[render(a), render(b)] for a, b, _, _ in chunk], question=[q for _, _, q, _ in chunk],
                       max_new_tokens=16, block_length=16).text
        correct += sum(answer.strip().lower() == truth for answer, (*_, truth) in zip(answers, chunk))
    return _share(correct, len(pairs))


def evaluate_multi_ref(pipe, edits, batch_size):
    """multi_ref_editing, and its two kinds apart: "put the X into the second picture" and "make the X the colour
    of the Y" (diagnostics)."""
    done = {"put": [0, 0], "make": [0, 0]}
    for chunk in _chunks(edits, batch_size):
        images = pipe(image=[[render(a), render(b)] for a, b, _, _ in chunk], instruction=[t for _, _, t, _ in chunk],
                      generator=torch.Generator().manual_seed(0), **TURBO).images
        for (_, second, instruction, target), image in zip(chunk, images):
            tally = done[instruction.split()[0]]
            tally[0] += int(score_edit(second, target, image))
            tally[1] += 1
    return {"multi_ref_editing": _share(sum(d for d, _ in done.values()), len(edits)),
            "multi_ref_put": _share(*done["put"]), "multi_ref_recolour": _share(*done["make"])}


def interleaved_right(segments, expected) -> bool:
    """Every segment right and in order: texts equal word for word, pictures read back as the scene asked for."""
    if len(segments) != len(expected):
        return False
    for got, want in zip(segments, expected):
        if isinstance(want, str):
            if not isinstance(got, str) or words(got) != words(want):
                return False
        elif isinstance(got, str) or read_scene(got) != want:
            return False
    return True


def evaluate_interleaved(pipe, scripts):
    """(every segment right, in order; the answer has the asked-for form: text, picture, text, picture)."""
    right = shaped = 0
    for _, prompt, expected in scripts:
        out = pipe(prompt, interleaved=True, generator=torch.Generator().manual_seed(0), **TURBO)
        right += int(interleaved_right(out.segments[0], expected))
        shaped += int([isinstance(item, str) for item in out.segments[0]] == [isinstance(i, str) for i in expected])
    return _share(right, len(scripts)), _share(shaped, len(scripts))


def evaluate_counting(pipe, counting, batch_size):
    correct = {1: [0, 0], 2: [0, 0]}
    for chunk in _chunks(counting, batch_size):
        answers = pipe(image=[render(s) for s, _ in chunk], question=["How many shapes are there?"] * len(chunk),
                       max_new_tokens=16, block_length=16).text
        for answer, (scene, truth) in zip(answers, chunk):
            tally = correct[len(scene.shapes)]
            tally[0] += int(answer.strip().lower() == truth)
            tally[1] += 1
    total = _share(sum(c for c, _ in correct.values()), sum(n for _, n in correct.values()))
    return total, _share(*correct[1]), correct[1][1]


def evaluate_family(pipe, scenes, batch_size, seed=0, log=print):
    """Every newer task's score (the keys of the JSON line) and the case counts."""
    import time

    drawn = cases(scenes, seed)
    result, counts, timings = {}, {}, {}
    start = time.time()
    result.update(evaluate_thinking(pipe, scenes, batch_size))
    timings["thinking"] = time.time() - start
    start = time.time()
    result["two_image_understanding"] = evaluate_pairs(pipe, drawn["pairs"], batch_size)
    timings["two_image_understanding"] = time.time() - start
    start = time.time()
    result.update(evaluate_multi_ref(pipe, drawn["multi_ref"], batch_size))
    timings["multi_ref_editing"] = time.time() - start
    start = time.time()
    result["interleaved"], result["interleaved_structure"] = evaluate_interleaved(pipe, drawn["interleaved"])
    timings["interleaved"] = time.time() - start
    start = time.time()
    result["counting"], result["counting_one_shape"], counts["one_shape_scenes"] = evaluate_counting(
        pipe, drawn["counting"], batch_size)
    timings["counting"] = time.time() - start
    counts.update({"pair_questions": len(drawn["pairs"]), "multi_ref_edits": len(drawn["multi_ref"]),
                   "interleaved_runs": len(drawn["interleaved"])})
    return result, counts, timings


__all__ = ["evaluate_family", "interleaved_right"]
