"""An analytic checker for shapes-world images: what is drawn where, measured from pixels (no model involved), so
a generated image can be scored against the scene it was asked to show.

Each pixel is unmixed into background (estimated from the image border) plus some coverage of its best-fitting
world colour, so noisy, blurry or generated images still read and edge blends count by coverage. Per colour,
4-connected components big enough to be a shape are filled (holes from noise) and compared with the three world
shapes at the component's own area and centroid: the best IoU names the shape (edge pixels and strays move it far
less than they move a bounding box), and the shape's centre names the position (nearest anchor).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

try:
    from .world import ALL_COLOURS, IMAGE_SIZE, POSITIONS, SHAPE_SIZE, SHAPES, Scene, Shape
except ImportError:  # run as a script from this folder
    from world import ALL_COLOURS, IMAGE_SIZE, POSITIONS, SHAPE_SIZE, SHAPES, Scene, Shape

_NAMES = list(ALL_COLOURS)
_PALETTE = np.array([ALL_COLOURS[n] for n in _NAMES], dtype=np.float32)
_ANCHORS = {name: (x / IMAGE_SIZE, y / IMAGE_SIZE) for name, (x, y) in POSITIONS.items()}


@dataclass(frozen=True)
class DetectedShape:
    colour: str
    shape: str
    position: str
    confidence: float  # in [0, 1]: colour purity of the pixels times the shape template's IoU with the component
    area: int  # pixels, holes filled
    box: tuple  # (x0, y0, x1, y1), inclusive


def _label(classes: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-negative class: each pixel gets the smallest flat index of its component
    (background keeps its own index, unused). Min-propagation plus pointer jumping converges in a few numpy passes,
    where a Python flood fill took most of the checker's time."""
    height, width = classes.shape
    labels = np.arange(height * width).reshape(height, width)
    right = (classes[:, 1:] == classes[:, :-1]) & (classes[:, 1:] >= 0)
    down = (classes[1:] == classes[:-1]) & (classes[1:] >= 0)
    while True:
        new = labels.copy()
        # A pixel sits in two pairs per axis: each side is lowered in place, in turn, so neither pair's min is lost.
        pair = np.where(right, np.minimum(new[:, 1:], new[:, :-1]), labels.size)
        np.minimum(new[:, 1:], pair, out=new[:, 1:])
        np.minimum(new[:, :-1], pair, out=new[:, :-1])
        pair = np.where(down, np.minimum(new[1:], new[:-1]), labels.size)
        np.minimum(new[1:], pair, out=new[1:])
        np.minimum(new[:-1], pair, out=new[:-1])
        new = new.ravel()[new]  # pointer jumping: a pixel's label's label is in the same component and no larger
        if np.array_equal(new, labels):
            return labels
        labels = new


def _fit_shape(ys: np.ndarray, xs: np.ndarray):
    """(shape, IoU, centre x, centre y, area with holes filled): the axis-aligned world shape of the component's area
    and centroid that overlaps it best. Uses every pixel, so a ragged edge or a stray pixel barely moves it (a
    bounding box would)."""
    y0, x0 = ys.min() - 2, xs.min() - 2
    grid_y, grid_x = np.mgrid[y0:ys.max() + 3, x0:xs.max() + 3]
    component = np.zeros(grid_y.shape, dtype=bool)
    component[ys - y0, xs - x0] = True
    # Fill holes (pixels that noise pushed to another colour or to the background) before measuring: a speckled
    # square is still a square, but its raw pixel count would shrink the templates.
    outside = _label(np.where(component, -1, 0))
    component |= ~np.isin(outside, outside[0, 0])  # the padded window's border is all outside
    area, my, mx = component.sum(), grid_y[component].mean(), grid_x[component].mean()
    dy, dx = grid_y - my, grid_x - mx
    fits = []
    for kind in SHAPES:
        if kind == "circle":
            side = 2 * (area / np.pi) ** 0.5
            template, centre_y = dx ** 2 + dy ** 2 <= (side / 2) ** 2, my
        elif kind == "square":
            side = area ** 0.5
            template, centre_y = (np.abs(dx) <= side / 2) & (np.abs(dy) <= side / 2), my
        else:  # apex up, base = height = side; the centroid sits side / 6 below the box centre
            side = (2 * area) ** 0.5
            depth = dy + 2 * side / 3
            template, centre_y = (depth >= 0) & (depth <= side) & (np.abs(dx) <= depth / 2), my - side / 6
        fits.append((float((template & component).sum() / (template | component).sum()), kind, centre_y))
    iou, kind, centre_y = max(fits)
    return kind, iou, mx, centre_y, int(area)


def detect(image: Image.Image, max_distance: float = 100.0, min_area_fraction: float = 0.25) -> List[DetectedShape]:
    """Shapes found in `image` (any size), largest first.

    Each pixel is unmixed against every world colour as `background + coverage * (colour - background)`: it belongs
    to the colour whose mix explains it best when that colour covers at least half of it and the unexplained rest is
    under `max_distance`. Blends at a shape's edge thus count by coverage (a blurred shape keeps its size and
    outline, and a red-background blend can never pass for orange). The best fit, not the threshold, picks the
    colour, so the threshold can be generous: it only drops pixels no world colour explains (100 keeps ~99% of the
    pixels of a shape under Gaussian noise of sigma 30/255). A component counts when its area is at least
    `min_area_fraction` of a world triangle's (scaled to the image), which drops specks."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    axes = _PALETTE - background
    offsets = pixels - background
    projections, lengths = offsets @ axes.T, (axes ** 2).sum(-1)
    coverage = np.clip(projections / lengths, 0, 1)
    # |offset - coverage * axis|^2 expanded, to skip an (h, w, colours, 3) array.
    squares = (offsets ** 2).sum(-1, keepdims=True) - 2 * coverage * projections + coverage ** 2 * lengths
    residuals = np.sqrt(np.maximum(squares, 0))
    nearest = residuals.argmin(-1)
    nearest_residual = residuals.min(-1)
    covered = np.take_along_axis(coverage, nearest[..., None], -1)[..., 0]
    classes = np.where((covered >= 0.5) & (nearest_residual < max_distance), nearest, -1)
    labels = _label(classes)
    side = SHAPE_SIZE * (width * height) ** 0.5 / IMAGE_SIZE
    min_area = max(min_area_fraction * side * side / 2, 4)

    found = []
    roots, counts = np.unique(labels[classes >= 0], return_counts=True)
    for root in roots[counts >= min_area]:
        ys, xs = np.nonzero(labels == root)
        shape, iou, cx, cy, area = _fit_shape(ys, xs)
        cx, cy = (cx + 0.5) / width, (cy + 0.5) / height
        position = min(_ANCHORS, key=lambda p: (_ANCHORS[p][0] - cx) ** 2 + (_ANCHORS[p][1] - cy) ** 2)
        purity = float(np.mean(1 - nearest_residual[ys, xs] / max_distance))
        found.append(DetectedShape(_NAMES[classes[ys[0], xs[0]]], shape, position, round(purity * iou, 4), area,
                                   (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    return sorted(found, key=lambda d: -d.area)


def by_colour(detections: List[DetectedShape]) -> Dict[str, DetectedShape]:
    """The largest detection of each colour (a generation may split a shape into fragments; the big one speaks)."""
    out = {}
    for d in sorted(detections, key=lambda d: -d.area):
        out.setdefault(d.colour, d)
    return out


def read_scene(image: Image.Image, **kwargs) -> Optional[Scene]:
    """The scene the image shows, or None when the detections do not form a valid world scene."""
    try:
        return Scene(tuple(Shape(d.colour, d.shape, d.position) for d in by_colour(detect(image, **kwargs)).values()))
    except ValueError:
        return None


def score_t2i(image: Image.Image, scene: Scene, **kwargs) -> Dict[str, bool]:
    """Per attribute, whether every shape of `scene` is drawn right: a detection of its colour exists ("color"),
    that detection has its shape ("shape") and its position ("position"). "count": no extra colours drawn."""
    found = by_colour(detect(image, **kwargs))
    matches = [found.get(s.colour) for s in scene.shapes]
    return {
        "color": all(m is not None for m in matches),
        "shape": all(m is not None and m.shape == s.shape for m, s in zip(matches, scene.shapes)),
        "position": all(m is not None and m.position == s.position for m, s in zip(matches, scene.shapes)),
        "count": len(found) == len(scene.shapes),
    }


def edit_report(source: Scene, target: Scene, image: Image.Image, **kwargs) -> Dict[str, bool]:
    """"changed": the edited shape shows its new attributes; "kept": every other shape is intact and nothing extra
    (e.g. the shape still in its old colour or place) is drawn."""
    found = by_colour(detect(image, **kwargs))

    def shown(s):
        d = found.get(s.colour)
        return d is not None and (d.shape, d.position) == (s.shape, s.position)

    changed = [s for s in target.shapes if s not in source.shapes]
    if not changed:
        raise ValueError("the target scene is the source scene: nothing was edited")
    kept = [s for s in target.shapes if s in source.shapes]
    return {"changed": all(shown(s) for s in changed),
            "kept": all(shown(s) for s in kept) and len(found) == len(target.shapes)}


def score_edit(source: Scene, target: Scene, image: Image.Image, **kwargs) -> bool:
    """Edit success: the asked attribute changed and everything else kept (see `edit_report`)."""
    report = edit_report(source, target, image, **kwargs)
    return report["changed"] and report["kept"]
