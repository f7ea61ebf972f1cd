"""Interleaved generation for LLaDA2.0-Uni: one response that mixes text and images (our own design: the original
system only ships this in SGLang-Omni and its algorithm is unknown).

The block-diffusion loop runs unchanged, with a grammar hook (`_run_blocks(constrain=...)`) that is recomputed on
every step from the committed canvas. Each row's generated region is scanned left to right:

* text state: a committed token is text; the first masked text position (the *frontier*) may become any text id, or
  `<|image|>` when it and the 5 positions after it are masks inside the generated region (room for a header, one
  code and `<|/image|>`); those 5 positions are deferred (not committable) while the frontier is open. Every masked
  position after the frontier is undetermined: plain text only (no `<|image|>`, image codes, `<boi>`, `<|/image|>`,
  size tokens or `<|mask|>`).
* after a committed `<|image|>` at p: p+1 is a height size token `<|reserved_token_h|>`, p+2 a width one (deferred
  until the height is committed), p+3 `<boi>`. Sizes are restricted to 1..max_grid and to what fits in the run of
  masks starting at p+4 (h*w codes + `<|/image|>`). Positions from p+4 on are deferred until both sizes are known.
* once the header is complete, the next h*w positions are image codes only (with CFG when `guidance_scale` != 1: guided
  logits there, conditional logits everywhere else), then one position is forced to `<|/image|>`; text resumes.

Committed tokens are never changed; positions past the generated length keep the model's logits. Because every
decision only depends on the canvas, the cached and uncached paths agree. The frontier is always committable, so
every step commits at least one token (a block may take more than `steps` forwards).
"""

from dataclasses import dataclass

import torch

from .generation_config_llada2_uni import INVALID_SIZE_MODES, TEXT_ORDERS
from .generation_llada2_uni import guide_logits

_HEADER = 4  # <|image|> h w <boi>


@dataclass
class InterleavedGrammar:
    """The ids the grammar needs. `size_ids[n]` writes a grid side of n tokens."""

    vocab_size: int
    mask_id: int
    image_start_id: int
    boi_id: int
    image_end_id: int
    size_ids: list
    code_offset: int
    codebook_size: int
    max_grid: tuple = None
    invalid_size: str = "clamp"
    text_order: str = "frontier"

    def __post_init__(self):
        if self.text_order not in TEXT_ORDERS:
            raise ValueError(f"`interleaved_text` must be one of {TEXT_ORDERS}, got {self.text_order!r}.")
        if self.invalid_size not in INVALID_SIZE_MODES:
            raise ValueError(f"`invalid_size` must be one of {INVALID_SIZE_MODES}, got {self.invalid_size!r}.")
        largest = len(self.size_ids) - 1
        if largest < 1:
            raise ValueError("the tokenizer has no <|reserved_token_N|> with N >= 1 to write a grid side.")
        grid = (largest, largest) if self.max_grid is None else self.max_grid
        if isinstance(grid, int) and not isinstance(grid, bool):
            grid = (grid, grid)
        if (not isinstance(grid, (tuple, list)) or len(grid) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in grid)):
            raise ValueError(f"`max_grid` must be a pair (max height, max width) of positive ints, got {grid!r}.")
        if max(grid) > largest:
            if self.invalid_size == "error":
                raise ValueError(f"`max_grid` {tuple(grid)} exceeds the largest grid side the tokenizer can write "
                                 f"(<|reserved_token_{largest}|>).")
            grid = (min(grid[0], largest), min(grid[1], largest))
        self.max_grid = tuple(grid)
        self.size_value = {token: n for n, token in enumerate(self.size_ids)}

    def masks(self, device):
        """Bool [V] vectors of allowed ids per position kind (cached per device)."""
        cache = self.__dict__.setdefault("_masks", {})
        if device not in cache:
            V = self.vocab_size
            code = torch.zeros(V, dtype=torch.bool, device=device)
            code[self.code_offset : self.code_offset + self.codebook_size] = True
            plain = ~code
            specials = [self.mask_id, self.image_start_id, self.boi_id, self.image_end_id, *self.size_ids]
            plain[torch.tensor([t for t in specials if t < V], device=device)] = False
            opening = plain.clone()
            opening[self.image_start_id] = True
            one = {}
            for name, token in (("boi", self.boi_id), ("eoi", self.image_end_id)):
                one[name] = torch.zeros(V, dtype=torch.bool, device=device)
                one[name][token] = True
            cache[device] = {"plain": plain, "text": opening, "code": code, **one}
        return cache[device]

    def size_mask(self, largest, device):
        keep = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
        keep[torch.tensor(self.size_ids[1 : largest + 1], device=device)] = True
        return keep

    def _size(self, token, side, position):
        value = self.size_value.get(token)
        limit = self.max_grid[0 if side == "height" else 1]
        if value is not None and 1 <= value <= limit:
            return value
        if self.invalid_size == "error" or value is None:
            what = "not a size token" if value is None else f"a grid {side} of {value}"
            raise ValueError(f"image header at position {position}: {what} (allowed 1..{limit}, `max_grid`).")
        return min(max(value, 1), limit)


def plan_row(grammar: InterleavedGrammar, row: list, gen_start: int, gen_end: int, start: int, end: int) -> list:
    """Per position of [start, end): (kind, committable). Kinds: "text" (text or `<|image|>`), "plain" (text),
    ("size", largest), "boi", "code", "eoi", or None (outside the generated region: untouched)."""
    mask, stop = grammar.mask_id, min(end, gen_end)
    plan = {}
    i, undetermined, defer_to = gen_start, False, -1
    while i < stop:
        token = row[i]
        if undetermined:
            plan[i] = ("plain", grammar.text_order == "parallel" and i > defer_to)
            i += 1
            continue
        if token == mask:
            room = i + 5 < gen_end and all(row[j] == mask for j in range(i + 1, i + 6))
            plan[i] = ("text" if room else "plain", True)
            undetermined, defer_to = True, (i + 5 if room else -1)
            i += 1
            continue
        if token != grammar.image_start_id:
            plan[i] = ("plain", True)
            i += 1
            continue
        # a committed <|image|>: the header, then the span
        p = i
        plan[p] = ("plain", True)
        run = 0
        while p + _HEADER + run < gen_end and row[p + _HEADER + run] == mask:
            run += 1
        sides = []
        for k, side in ((1, "height"), (2, "width")):
            q = p + k
            if q >= gen_end:
                break
            if row[q] == mask:
                other = sides[0] if sides else 1
                limit = grammar.max_grid[k - 1]
                plan[q] = (("size", max(1, min(limit, (run - 1) // other))), k == 1 or len(sides) == 1)
            else:
                plan[q] = ("plain", True)
                sides.append(grammar._size(row[q], side, q))
        if p + 3 < gen_end:
            plan[p + 3] = ("boi", True)
            if row[p + 3] not in (mask, grammar.boi_id) and grammar.invalid_size == "error":
                raise ValueError(f"image header at position {p}: position {p + 3} must be <boi>.")
        if len(sides) < 2:  # sizes pending: everything after the header waits
            for q in range(p + _HEADER, stop):
                plan[q] = ("plain", False)
            break
        span = sides[0] * sides[1]
        for q in range(p + _HEADER, min(p + _HEADER + span, stop)):
            plan[q] = ("code", True)
        if p + _HEADER + span < stop:
            plan[p + _HEADER + span] = ("eoi", True)
        i = p + _HEADER + span + 1
    return [plan.get(q, (None, True)) for q in range(start, end)]


def make_constraint(grammar, gen_start, gen_length, batch, cfg_scale=1.0):
    """The `_run_blocks(constrain=...)` hook: CFG on image codes only (rows [batch:2*batch] are the unconditional
    twins when `cfg_scale` != 1), then the grammar mask; returns (logits [B, L, V], committable [B, L])."""

    def constrain(logits, tokens, start, end):
        device = logits.device
        kinds = grammar.masks(device)
        cond = logits[:batch]
        allow = torch.ones(cond.shape[:2], dtype=torch.bool, device=device)
        keep = torch.ones(cond.shape, dtype=torch.bool, device=device)
        code_pos = torch.zeros(cond.shape[:2], dtype=torch.bool, device=device)
        for b in range(batch):
            row = tokens[b].tolist()
            for j, (kind, ok) in enumerate(plan_row(grammar, row, gen_start[b], gen_start[b] + gen_length, start,
                                                    end)):
                allow[b, j] = ok
                if kind is None:
                    continue
                if isinstance(kind, tuple):
                    keep[b, j] = grammar.size_mask(kind[1], device)
                else:
                    keep[b, j] = kinds[kind]
                    code_pos[b, j] = kind == "code"
        if cfg_scale != 1.0 and logits.shape[0] > batch:
            guided = guide_logits(cond, logits[batch : 2 * batch], cfg_scale)
            cond = torch.where(code_pos.unsqueeze(-1), guided, cond)
        return cond.masked_fill(~keep, float("-inf")), allow

    return constrain


def interleaved_grammar(config, size_ids, max_grid=None, invalid_size="clamp",
                        text_order="frontier") -> InterleavedGrammar:
    """The grammar of a `LLaDA2UniConfig`; `size_ids[n]` writes a grid side of n (from `reserved_token_start_id`)."""
    if not size_ids:
        raise ValueError("interleaved generation needs the size tokens: set `reserved_token_start_id` in the config.")
    for name in ("image_start_token_id", "boi_token_id", "image_end_token_id"):
        if getattr(config, name, None) is None:
            raise ValueError(f"interleaved generation needs `{name}` in the model config.")
    text = config.get_text_config()
    return InterleavedGrammar(
        vocab_size=text.vocab_size, mask_id=text.mask_token_id, image_start_id=config.image_start_token_id,
        boi_id=config.boi_token_id, image_end_id=config.image_end_token_id, size_ids=list(size_ids),
        code_offset=config.image_token_offset, codebook_size=config.codebook_size, max_grid=max_grid,
        invalid_size=invalid_size, text_order=text_order if text_order is not None else "frontier",
    )


__all__ = ["InterleavedGrammar", "interleaved_grammar", "plan_row", "make_constraint"]
