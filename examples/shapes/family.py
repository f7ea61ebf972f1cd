"""The newer tasks of the family on the shapes world: thinking text-to-image, questions about two pictures,
multi-reference edits, interleaved generation, and counting. `cases(scenes, seed)` draws them over a set of scenes
(the pairs come from the same set, so held-out scenes pair only with held-out scenes); `family_rows` turns training
cases into collator rows; `benchmarks/eval_shapes.py` scores a model on the test split's cases.
"""

import random
from functools import partial

from examples.shapes.world import (
    caption,
    interleaved_script,
    moved,
    multi_ref_edits,
    pair_questions,
    plan,
)
from transformers_llada_uni.prompting_llada2_uni import UNCONDITION


def _partner(scenes, singles, rng, single_share):
    return rng.choice(singles) if singles and rng.random() < single_share else rng.choice(scenes)


def cases(scenes, seed=0, *, pairs_per_scene=2, single_pairs=8, interleaved_per_scene=1):
    """{"pairs": [(first, second, question, answer)], "multi_ref": [(first, second, instruction, target)],
    "interleaved": [(scene, prompt, segments)], "thinking": [scene], "counting": [(scene, answer)]} over `scenes`.

    Each scene gets `pairs_per_scene` random partners (half of them one-shape scenes, so "put ... into the second
    picture" has room), one moved copy of itself ("Where did ... move to?"), and each one-shape scene
    `single_pairs` one-shape partners that share its colour or shape half of the time (balanced yes / no).
    `interleaved_per_scene`: up to that many interleaved scripts per scene, each with its own change. The first is
    drawn as with 1; the others come from a generator of their own, so every other case stays what it was."""
    rng, more_scripts = random.Random(f"family/{seed}"), random.Random(f"family/{seed}/interleaved")
    scenes = list(scenes)
    singles = [s for s in scenes if len(s.shapes) == 1]
    out = {"pairs": [], "multi_ref": [], "interleaved": [], "thinking": list(scenes), "counting": []}
    for scene in scenes:
        out["counting"].append((scene, "one" if len(scene.shapes) == 1 else "two"))
        partners = [_partner(scenes, singles, rng, 0.5) for _ in range(pairs_per_scene)]
        for partner in partners:
            out["pairs"] += [(scene, partner, q, a) for q, a in pair_questions(scene, partner)
                             if not q.startswith("Are")]
            options = multi_ref_edits(scene, partner)
            if options:
                instruction, target = rng.choice(options)
                out["multi_ref"].append((scene, partner, instruction, target))
        move = moved(scene, rng)
        if move is not None:
            out["pairs"] += [(scene, move[1], q, a) for q, a in pair_questions(scene, move[1]) if "move" in q]
        if len(scene.shapes) == 1:
            (shape,) = scene.shapes
            for _ in range(single_pairs):
                same_colour, same_shape = rng.random() < 0.5, rng.random() < 0.5
                fits = [s for s in singles if s != scene and (s.shapes[0].colour == shape.colour) == same_colour
                        and (s.shapes[0].shape == shape.shape) == same_shape]
                if fits:
                    partner = rng.choice(fits)
                    out["pairs"] += [(scene, partner, q, a) for q, a in pair_questions(scene, partner)
                                     if q.startswith("Are")]
        script = interleaved_script(scene, rng)
        if script is not None:
            others = partial(interleaved_script, scene, more_scripts)
            out["interleaved"] += [(scene, *one) for one in _more(script, interleaved_per_scene, others)]
    return out


def _more(first, count, draw, tries=4):
    """`first` and up to `count - 1` more `draw()`s whose change (the third segment) differs from those before."""
    out, seen = [first], {first[1][2]}
    for _ in range(tries * (count - 1)):
        if len(out) == count:
            break
        script = draw()
        if script[1][2] not in seen:
            out.append(script)
            seen.add(script[1][2])
    return out


PAIR_REPEATS = {"Which": 1, "Are": 3, "Where": 2}


def _repeats(table, text):
    """Copies of a row: `table` is one count for every row, or a dict by the text's first word."""
    return table[text.split()[0]] if isinstance(table, dict) else table


def family_rows(cases_, codes_of, *, seed=0, uncondition_rate=0.1, thinking_repeats=3, pair_repeats=None,
                multi_ref_repeats=2, interleaved_repeats=3, counting_repeats=(8, 1)):
    """Collator rows of `cases(...)`; `codes_of(scene)` gives a scene's code grid dict. `pair_repeats`: copies per
    two-picture question by its first word (default `PAIR_REPEATS`: "Which picture has ...?" questions are many, the
    yes / no and "Where did ... move to?" ones few). `counting_repeats`: copies of "How many shapes are there?" for
    one-shape and two-shape scenes (one-shape scenes are 5% of the world, and the model answered "two" too often).
    `multi_ref_repeats` may also be a dict by the instruction's first word ("put" / "make")."""
    pair_repeats = PAIR_REPEATS if pair_repeats is None else pair_repeats
    rng = random.Random(f"family-rows/{seed}")
    rows = []

    def text(value):
        return UNCONDITION if rng.random() < uncondition_rate else value

    for scene in cases_["thinking"]:
        for _ in range(thinking_repeats):
            rows.append({"prompt": text(caption(scene)), "thinking": plan(scene),
                         "target_image_tokens": codes_of(scene)})
    for first, second, question, answer in cases_["pairs"]:
        rows += [{"image_tokens": [codes_of(first), codes_of(second)], "question": question, "answer": answer}
                 for _ in range(_repeats(pair_repeats, question))]
    for first, second, instruction, target in cases_["multi_ref"]:
        for _ in range(_repeats(multi_ref_repeats, instruction)):
            rows.append({"image_tokens": [codes_of(first), codes_of(second)], "instruction": text(instruction),
                         "target_image_tokens": codes_of(target)})
    for _, prompt, segments in cases_["interleaved"]:
        response = [{"text": item} if isinstance(item, str) else {"image_tokens": codes_of(item)} for item in segments]
        rows += [{"prompt": text(prompt), "segments": response} for _ in range(interleaved_repeats)]
    for scene, answer in cases_["counting"]:
        repeats = counting_repeats[0] if len(scene.shapes) == 1 else counting_repeats[1]
        rows += [{"image_tokens": codes_of(scene), "question": "How many shapes are there?", "answer": answer}
                 for _ in range(repeats)]
    return rows


__all__ = ["PAIR_REPEATS", "cases", "family_rows"]
