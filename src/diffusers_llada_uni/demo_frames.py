"""The demo's pure rendering helpers (no gradio): the LLM's per-step history as frames (image tokens as a grid of cells
coloured per VQ code, grey while masked; text with `░` for a masked position) and an interleaved answer as HTML.
`demo.py` builds the page on them."""

import base64
import colorsys
import html
import io
from typing import Optional

MASK_GLYPH = "░"
CODE_GLYPH = "▦"
MASK_COLOUR = (190, 190, 190)
MAX_FRAMES = 32  # a replay shows at most this many steps (evenly spaced, the last one always)


def history_steps(history) -> list:
    """The per-step canvases (LongTensor [rows, generated length]) of a pipeline call's `.history`, in order: that is a
    list with one entry per LLM generate() call, each the generator's tuple of canvases (None where a call recorded
    none); `history` itself is None when it was not requested. A bare tuple of canvases (one generate call's
    history) is taken too."""
    if history is None:
        return []
    steps = []
    for item in history:
        if isinstance(item, (list, tuple)):
            steps.extend(step for step in item if step is not None)
        elif item is not None:
            steps.append(item)
    return steps


def code_colour(code: int) -> tuple:
    hue = (code * 0.6180339887) % 1.0  # golden-ratio hues: neighbouring codes get distant colours
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.92))


def canvas_image(ids, grid: tuple, mask_id: int, offset: int, cell: Optional[int] = None):
    """One step of an image's denoising as a picture: a cell per token, coloured per VQ code, grey while masked."""
    from PIL import Image, ImageDraw

    h, w = grid
    values = [int(v) for v in ids][-h * w:]
    values = [mask_id] * (h * w - len(values)) + values
    cell = cell or max(8, 192 // max(h, w))
    picture = Image.new("RGB", (w * cell, h * cell), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for index, value in enumerate(values):
        row, col = divmod(index, w)
        colour = MASK_COLOUR if value == mask_id else code_colour(value - offset)
        draw.rectangle([col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1], fill=colour,
                       outline=(255, 255, 255) if cell >= 8 else None)
    return picture


def canvas_text(ids, tokenizer, mask_id: int, eos_id: Optional[int], code_range: Optional[tuple] = None) -> str:
    """One step of a text response: decoded text with `░` for each masked position (`▦` for image codes); stops at
    a committed end of sequence."""
    pieces, run = [], []

    def flush():
        if run:
            pieces.append(tokenizer.decode(run, skip_special_tokens=True))
            run.clear()

    for value in (int(v) for v in ids):
        if eos_id is not None and value == eos_id:
            break
        if value == mask_id:
            flush()
            pieces.append(MASK_GLYPH)
        elif code_range is not None and code_range[0] <= value < code_range[1]:
            flush()
            pieces.append(CODE_GLYPH)
        else:
            run.append(value)
    flush()
    return "".join(piece if piece in (MASK_GLYPH, CODE_GLYPH) else f" {piece} " for piece in pieces).strip()


def pick_frames(frames: list, limit: int = MAX_FRAMES) -> list:
    """The frames a replay shows: a step that changed nothing visible is dropped (it would show nothing new, and gradio
    rewrites the cached file of an equal picture in place, under the same URL, while the browser may still be reading
    it for the step before: a broken picture), then at most `limit`, evenly spaced, the last one always."""
    frames = [frame for index, frame in enumerate(frames) if index == 0 or frame != frames[index - 1]]
    if len(frames) <= limit:
        return frames
    chosen = sorted({round(i * (len(frames) - 1) / (limit - 1)) for i in range(limit)})
    return [frames[i] for i in chosen]


def image_data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def segments_html(segments: list) -> str:
    """An interleaved response as HTML, in order: each item a `div.llada-segment` with `data-kind` text / image."""
    if not segments:
        return ('<div class="llada-segments" data-count="0"><p class="llada-empty">The model gave an empty response.'
                "</p></div>")
    items = []
    for index, item in enumerate(segments):
        if isinstance(item, str):
            body = html.escape(item).replace("\n", "<br>")
            items.append(f'<div class="llada-segment" data-kind="text" data-index="{index}"><p>{body}</p></div>')
        else:
            items.append(f'<div class="llada-segment" data-kind="image" data-index="{index}">'
                         f'<img src="{image_data_uri(item)}" alt="generated picture {index}" '
                         'style="image-rendering: pixelated; width: 192px"></div>')
    return f'<div class="llada-segments" data-count="{len(segments)}">{"".join(items)}</div>'


__all__ = ["CODE_GLYPH", "MASK_COLOUR", "MASK_GLYPH", "MAX_FRAMES", "canvas_image", "canvas_text", "code_colour",
           "history_steps", "image_data_uri", "pick_frames", "segments_html"]
