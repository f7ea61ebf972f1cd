"""The tutorial's figure of the other modes (docs/tutorial.md section 7): thinking text-to-image, a question about
two pictures, a multi-reference edit and an interleaved answer, each through one `LLaDA2UniPipeline` call with the
model's own defaults. Used by `tutorial.py`."""

import torch
from PIL import Image

from examples.shapes.checker import read_scene
from examples.shapes.world import Scene, Shape, caption, parse_plan, render

RED_LEFT = Scene((Shape("red", "circle", "left"),))
BLUE_TOP = Scene((Shape("blue", "square", "top"),))
TWO = Scene((Shape("red", "circle", "left"), Shape("blue", "square", "top")))
THINK_PROMPT = "a green triangle on the right and a yellow circle at the bottom"
QUESTION = "Which picture has the blue square?"
MULTI_REF = "put the red circle into the second picture"
STORY = f"draw {caption(RED_LEFT)} then move the circle to the right"


def family(tutorial):
    """Writes family.png; returns what each call produced (texts, and whether the checker reads each picture as the
    scene asked for)."""
    from examples.shapes.tutorial import big, captioned, column, row  # tutorial.py imports this module

    pipe, seed = tutorial.pipe, tutorial.seed

    def gen():
        return torch.Generator().manual_seed(seed)

    numbers, lines = {}, []
    think = pipe(THINK_PROMPT, thinking=True, decoder="turbo", generator=gen())
    plan_text = think.text[0]
    numbers["thinking"] = {"prompt": THINK_PROMPT, "plan": plan_text,
                           "plan_matches_picture": parse_plan(plan_text) == read_scene(think.images[0]) is not None}
    lines.append(row([captioned(big(think.images[0]), f'reasoning: "{plan_text}"')],
                     title=f'pipe("{THINK_PROMPT}", thinking=True)'))

    pictures = [render(TWO), render(RED_LEFT)]
    answer = pipe(image=[pictures], question=QUESTION).text[0]
    numbers["two_pictures"] = {"question": QUESTION, "answer": answer}
    lines.append(row([captioned(big(p), name) for p, name in zip(pictures, ("first", "second"))]
                     + [captioned(Image.new("RGB", (1, 1), "white"), f'-> "{answer}"', size=16)],
                     title=f'pipe(image=[[first, second]], question="{QUESTION}")'))

    sources = [render(RED_LEFT), render(BLUE_TOP)]
    edited = pipe(image=[sources], instruction=MULTI_REF, decoder="turbo", generator=gen()).images[0]
    numbers["multi_reference"] = {"instruction": MULTI_REF,
                                  "result_is_target": read_scene(edited) == Scene(BLUE_TOP.shapes + RED_LEFT.shapes)}
    lines.append(row([captioned(big(p), name) for p, name in zip(sources, ("first", "second"))]
                     + [captioned(big(edited), "result")],
                     title=f'pipe(image=[[first, second]], instruction="{MULTI_REF}")'))

    story = pipe(STORY, interleaved=True, decoder="turbo", generator=gen()).segments[0]
    panels = [captioned(big(item), "") if not isinstance(item, str) else
              captioned(Image.new("RGB", (1, 1), "white"), "\n".join(_wrap(item)), size=16) for item in story]
    numbers["interleaved"] = {"prompt": STORY, "segments": [item if isinstance(item, str) else "<image>"
                                                             for item in story]}
    lines.append(row(panels or [captioned(Image.new("RGB", (1, 1), "white"), "(no segments)")],
                     title=f'pipe("{STORY}", interleaved=True).segments[0]'))
    tutorial.save(column(lines), "family")
    return numbers


def _wrap(text, width=28):
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return out + ([line] if line else [])


__all__ = ["family"]
