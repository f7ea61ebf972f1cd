"""The shapes world: scenes of one or two coloured shapes on a 48x48 image, and every text said about them.

The image is a 3 x 3 grid of 16 px cells, the image tokenizer's patch size; the five positions (left, right, top,
bottom, center) are the cells of a plus sign, and a shape is drawn 12 px wide in the middle of its cell. So every
patch shows the background or exactly one whole shape, and a scene's token grid is a direct composition of what
each shape looks like on its own (an earlier 64 px world with anchors straddling the patch grid drew each shape into
4-6 patches differently depending on its place, which the tiny models could not learn; see docs/shapes.md).

Rules that keep every text unambiguous (each question has exactly one answer, each edit exactly one target):

* a scene holds 1 or 2 shapes; two shapes never share a colour (so "the red shape" always names one) nor a
  position;
* two shapes may share a shape name; then they are referred to as "the red circle", otherwise as "the circle".

The world is small and finite (`all_scenes()`: 2790 scenes over the six `COLOURS`), which is what lets a tiny model
learn it on a CPU and lets the datasets hold out whole scenes. `NEW_COLOURS` (pink) is drawn and read by the pixel
side but never used by the LLM's training scenes: the tutorial teaches it to the LLM with a LoRA. Texts are plain
English over the fixed `VOCABULARY` (lower-cased: questions start with a capital, so a tokenizer built from it
should lower-case its input).
"""

import json
import random
import re
from dataclasses import asdict, dataclass
from itertools import combinations, product
from typing import List, Tuple

from PIL import Image, ImageDraw

# Far apart in RGB (closest pair, yellow/orange, is 90 apart) and far from the background, so the checker can name
# each pixel by its nearest colour even after noise and blur.
COLOURS = {
    "red": (220, 20, 20), "green": (20, 160, 40), "blue": (30, 60, 220),
    "yellow": (240, 210, 0), "purple": (140, 40, 190), "orange": (245, 120, 0),
}
# Not in any training scene of the LLM (see the module docstring); far from every colour above and the background.
NEW_COLOURS = {"pink": (250, 110, 190)}
SHAPES = ("circle", "square", "triangle")
IMAGE_SIZE = 48
CELL = 16  # the image tokenizer's patch size
# Cell (column, row) of each position in the 3 x 3 grid; a shape's 12 px box sits 2 px inside its cell, so shapes
# in neighbouring cells are 4 px apart and the image border (read by the checker as background) stays clear.
CELLS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "center": (1, 1)}
POSITIONS = {name: (CELL * col + CELL // 2, CELL * row + CELL // 2) for name, (col, row) in CELLS.items()}
SHAPE_SIZE = 12
BACKGROUND = (245, 245, 240)
ALL_COLOURS = {**COLOURS, **NEW_COLOURS}
NUMBERS = {1: "one", 2: "two"}
# "on the left" reads right, "on the top" does not.
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}

VOCABULARY = (
    "a", "and", "the", "on", "at", "in", "to", "into", "?",
    "left", "right", "top", "bottom", "center",
    "red", "green", "blue", "yellow", "purple", "orange", "pink",
    "circle", "square", "triangle",
    "what", "where", "how", "many", "is", "are", "there", "colour", "shape", "shapes", "one", "two",
    "make", "turn", "move",
)


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    position: str


@dataclass(frozen=True)
class Scene:
    shapes: Tuple[Shape, ...]

    def __post_init__(self):
        # Canonical order (by position) makes equal scenes compare and hash equal and fixes the caption's order.
        order = list(POSITIONS)
        object.__setattr__(self, "shapes", tuple(sorted(self.shapes, key=lambda s: order.index(s.position))))
        problem = _invalid(self.shapes)
        if problem:
            raise ValueError(f"invalid scene {self.shapes}: {problem}")

    def to_json(self) -> str:
        return json.dumps([asdict(s) for s in self.shapes])

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        return cls(tuple(Shape(**s) for s in json.loads(text)))


def _invalid(shapes) -> str:
    if not 1 <= len(shapes) <= 2:
        return "a scene holds 1 or 2 shapes"
    for s in shapes:
        if s.colour not in ALL_COLOURS or s.shape not in SHAPES or s.position not in POSITIONS:
            return f"unknown attribute in {s}"
    if len({s.colour for s in shapes}) < len(shapes):
        return "two shapes share a colour"
    if len({s.position for s in shapes}) < len(shapes):
        return "two shapes share a position"
    return ""


def is_valid(shapes) -> bool:
    return not _invalid(tuple(shapes))


def all_scenes(colours=None) -> List[Scene]:
    """Every scene of the world over `colours` (default: the six `COLOURS`), in a fixed order."""
    colours = list(COLOURS if colours is None else colours)
    singles = [Scene((Shape(c, s, p),)) for c, s, p in product(colours, SHAPES, POSITIONS)]
    pairs = []
    for (c1, c2), (p1, p2) in product(combinations(colours, 2), product(POSITIONS, repeat=2)):
        if is_valid([Shape(c1, SHAPES[0], p1), Shape(c2, SHAPES[0], p2)]):
            pairs += [Scene((Shape(c1, s1, p1), Shape(c2, s2, p2))) for s1, s2 in product(SHAPES, repeat=2)]
    return singles + pairs


def new_colour_scenes() -> List[Scene]:
    """The scenes that use a colour of `NEW_COLOURS` (none of them is in `all_scenes()`)."""
    return [scene for scene in all_scenes(ALL_COLOURS) if any(s.colour in NEW_COLOURS for s in scene.shapes)]


def random_scene(rng: random.Random, max_shapes: int = 2) -> Scene:
    """A scene with 1..max_shapes shapes (count uniform, then attributes uniform among valid ones)."""
    if max_shapes not in (1, 2):
        raise ValueError(f"a scene holds 1 or 2 shapes; max_shapes={max_shapes}")
    count = rng.randint(1, max_shapes)
    colours = rng.sample(list(COLOURS), count)
    positions = rng.sample(list(POSITIONS), count)
    return Scene(tuple(Shape(c, rng.choice(SHAPES), p) for c, p in zip(colours, positions)))


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image; ImageDraw does not anti-alias, so every pixel is the background or a named colour."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    scale = size / IMAGE_SIZE
    side = round(SHAPE_SIZE * scale)
    for s in scene.shapes:
        cx, cy = (round(v * scale) for v in POSITIONS[s.position])
        x0, y0 = cx - side // 2, cy - side // 2
        x1, y1 = x0 + side - 1, y0 + side - 1  # PIL boxes are inclusive
        fill = ALL_COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif s.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


# ---------------------------------------------------------------------------------------------------- texts

def words(text: str) -> List[str]:
    """The text's tokens as VOCABULARY spells them (lower case, "?" on its own)."""
    return re.findall(r"[a-z]+|\?", text.lower())


def _describe(s: Shape) -> str:
    return f"a {s.colour} {s.shape} {WHERE[s.position]}"


def caption(scene: Scene) -> str:
    return " and ".join(_describe(s) for s in scene.shapes)


def _shape_unique(scene: Scene, s: Shape) -> bool:
    return sum(o.shape == s.shape for o in scene.shapes) == 1


def reference(scene: Scene, s: Shape) -> str:
    """The shortest unambiguous noun phrase for `s` in `scene`."""
    return f"the {s.shape}" if _shape_unique(scene, s) else f"the {s.colour} {s.shape}"


def questions(scene: Scene) -> List[Tuple[str, str]]:
    """(question, one-word answer) pairs; only questions whose answer the scene fixes (and does not give away)."""
    out = []
    for s in scene.shapes:
        if _shape_unique(scene, s):
            out += [(f"What colour is the {s.shape}?", s.colour), (f"Where is the {s.shape}?", s.position)]
        out += [
            (f"What colour is the shape {WHERE[s.position]}?", s.colour),
            (f"What shape is {WHERE[s.position]}?", s.shape),
            (f"What shape is {s.colour}?", s.shape),
            (f"Where is the {s.colour} shape?", s.position),
        ]
    out.append(("How many shapes are there?", NUMBERS[len(scene.shapes)]))
    return out


def edits(scene: Scene, rng: random.Random) -> List[Tuple[str, Scene]]:
    """One colour, one shape and one position edit (each where a valid one exists) of a random shape of the scene.
    Colour edits only go to the six `COLOURS`."""
    out, palette = [], COLOURS
    for attribute in ("colour", "shape", "position"):
        options = []
        for i, s in enumerate(scene.shapes):
            values = {"colour": palette, "shape": SHAPES, "position": POSITIONS}[attribute]
            for value in values:
                if value == getattr(s, attribute):
                    continue
                changed = Shape(**{**asdict(s), attribute: value})
                others = [o for j, o in enumerate(scene.shapes) if j != i]
                if is_valid(others + [changed]):
                    options.append((s, changed, value))
        if not options:
            continue
        s, changed, value = rng.choice(options)
        edited = Scene(tuple(changed if o == s else o for o in scene.shapes))
        ref = reference(scene, s)
        text = {"colour": f"make {ref} {value}", "shape": f"turn {ref} into a {value}",
                "position": f"move {ref} to the {value}"}[attribute]
        out.append((text, edited))
    return out


def changed_attribute(source: Scene, target: Scene) -> str:
    """"colour", "shape" or "position": what an edit from `source` to `target` changed."""
    (before,) = [s for s in source.shapes if s not in target.shapes]
    (after,) = [s for s in target.shapes if s not in source.shapes]
    (attribute,) = [a for a in ("colour", "shape", "position") if getattr(before, a) != getattr(after, a)]
    return attribute


# ------------------------------------------------------------------------------------------ the newer tasks
# Words of the tasks below (thinking, two pictures, multi-reference edits, interleaved). They joined the world after
# the first six LLM cycles, so the tokenizer gains them as added tokens (`factory.extend_vocabulary`) and the earlier
# ids, image codes included, keep their rows.
EXTRA_WORDS = ("which", "picture", "has", "first", "second", "same", "yes", "no", "did", "put", "of", "draw", "then")
ORDINALS = ("first", "second")


def plan(scene: Scene) -> str:
    """Thinking-mode reasoning before a picture: what goes where, one clause a shape ("left red circle . top blue
    square"), in the scene's canonical order."""
    return " . ".join(f"{s.position} {s.colour} {s.shape}" for s in scene.shapes)


def parse_plan(text: str) -> "Scene | None":
    """The scene a `plan` text states, or None when it is not a valid plan."""
    shapes = []
    for clause in text.split("."):
        parts = words(clause)
        if len(parts) != 3:
            return None
        position, colour, shape = parts
        if position not in POSITIONS or colour not in ALL_COLOURS or shape not in SHAPES:
            return None
        shapes.append(Shape(colour, shape, position))
    return Scene(tuple(shapes)) if is_valid(shapes) else None


def moved(scene: Scene, rng: random.Random) -> "Tuple[Shape, Scene] | None":
    """One shape of `scene` moved to a free place: (the shape before the move, the new scene); None if none can."""
    options = [(s, p) for s in scene.shapes for p in POSITIONS
               if p != s.position and all(o.position != p for o in scene.shapes)]
    if not options:
        return None
    s, p = rng.choice(options)
    return s, Scene(tuple(Shape(s.colour, s.shape, p) if o == s else o for o in scene.shapes))


def pair_questions(first: Scene, second: Scene) -> List[Tuple[str, str]]:
    """(question, one-word answer) about two pictures; only questions the pair answers unambiguously."""
    out = []
    for index, (one, other) in enumerate(((first, second), (second, first))):
        for s in one.shapes:
            if (s.colour, s.shape) not in {(o.colour, o.shape) for o in other.shapes}:
                out.append((f"Which picture has the {s.colour} {s.shape}?", ORDINALS[index]))
    if len(first.shapes) == 1 and len(second.shapes) == 1:
        a, b = first.shapes[0], second.shapes[0]
        out += [("Are the two shapes the same colour?", "yes" if a.colour == b.colour else "no"),
                ("Are the two shapes the same shape?", "yes" if a.shape == b.shape else "no")]
    gone = [s for s in first.shapes if s not in second.shapes]
    came = [s for s in second.shapes if s not in first.shapes]
    if len(gone) == 1 and len(came) == 1 and (gone[0].colour, gone[0].shape) == (came[0].colour, came[0].shape):
        out.append((f"Where did the {gone[0].colour} {gone[0].shape} move to?", came[0].position))
    return out


def multi_ref_edits(first: Scene, second: Scene) -> List[Tuple[str, Scene]]:
    """Instructions over two pictures that change the second: put a shape of the first into it, or give one of its
    shapes the colour of a shape of the first. Every (instruction, edited second scene) whose result is valid."""
    out = []
    named_second = {(s.colour, s.shape) for s in second.shapes}
    for s in first.shapes:
        if (s.colour, s.shape) in named_second:
            continue
        if is_valid(list(second.shapes) + [s]):
            out.append((f"put the {s.colour} {s.shape} into the second picture", Scene(second.shapes + (s,))))
        for t in second.shapes:
            if (t.colour, t.shape) in {(o.colour, o.shape) for o in first.shapes} or t.colour == s.colour:
                continue
            recoloured = [Shape(s.colour, t.shape, t.position) if o == t else o for o in second.shapes]
            if is_valid(recoloured):
                out.append((f"make the {t.colour} {t.shape} the colour of the {s.colour} {s.shape}",
                            Scene(tuple(recoloured))))
    return out


def interleaved_script(scene: Scene, rng: random.Random) -> "Tuple[str, list] | None":
    """A prompt asking for a picture and a change, and its answer as ordered segments: the caption, the picture,
    the change in words, the changed picture (`str` and `Scene` items). None when the scene allows no edit."""
    options = edits(scene, rng)
    if not options:
        return None
    instruction, edited = rng.choice(options)
    return f"draw {caption(scene)} then {instruction}", [caption(scene), scene, instruction, edited]
