"""SPRINT for block-diffusion generation: a pruned prefix cache and adaptive unmasking (opt-in, approximate).

SPRINT ("Sparse Prefix Retention with Inference-time Non-uniform Token unmasking", LLaDA2.0-Uni README) adds two
things to the exact block cache of `generation_llada2_uni.py`:

* **Prefix pruning.** The first `cache_warmup_steps` steps of every block run against the full, exact prefix cache
  while an attention probe records how much the block's queries attend to each prefix position. The prefix is then
  cut to `keep_ratio` of its positions (per modality: `image_keep_ratio` for image codes, `text_keep_ratio` for the
  rest) and the block's later steps attend only to that subset. The score of a prefix position is our choice (the
  original's formula is not published):

      score = (1 - confidence_alpha) * attention / max(attention of the row) + confidence_alpha * confidence

  where `attention` is the softmax weight the position receives, averaged over layers, heads, the block's queries and
  the warm-up steps, and `confidence` is the probability the sampler gave the token when it was committed (1 for
  prompt tokens, which are given, not guessed). Each row's first real token, the most recent finished block and,
  with `protect_structure`, every structural token (bos, image start / end, `<boi>`, `<uncondition>`, the grid-size
  tokens and `config.structural_token_ids`, e.g. chat-role markers) are always kept, on top of the budget. Pruned
  keys keep the rotary positions they were cached with, and the active block keeps its own positions, so nothing is
  re-rotated. The full cache stays intact: every block's warm-up again sees the whole
  prefix, so a position pruned for one block can come back for the next.
* **Adaptive unmasking.** Each step commits the `ceil(masked / steps_left)` best positions ranked by `strategy`
  (`low_confidence`: probability of the chosen token; `top_k_margin`: top-1 minus top-2 probability; `neg_entropy`:
  minus the entropy of the distribution), plus every position whose probability exceeds `threshold`.

With `keep_ratio = 1` (both modalities kept whole) and `strategy="low_confidence"` a step makes the same decision as
the exact loop whenever the exact quota equals `ceil(masked / steps_left)`, e.g. when `steps == block_length`.
"""

import contextlib
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch

STRATEGIES = ("low_confidence", "top_k_margin", "neg_entropy")
# Names the original API uses for the same settings.
SPRINT_ALIASES = {"remasking": "strategy"}


@dataclass
class SprintConfig:
    r"""
    SPRINT settings (`generate(..., sprint=SprintConfig(...))`, or the same keys as a dict, or `sprint=True` for
    these defaults).

    Args:
        keep_ratio (`float` in (0, 1], defaults to 0.5): share of prefix positions kept after the warm-up steps.
        image_keep_ratio / text_keep_ratio (`float` in (0, 1], *optional*): per-modality overrides (image codes are
            ids in `[config.image_token_offset, + codebook_size)`); `None` uses `keep_ratio`, 1.0 keeps them all.
        confidence_alpha (`float` in [0, 1], defaults to 0.5): weight of token confidence against attention.
        cache_warmup_steps (`int` >= 1, defaults to 1): steps per block that see the full prefix (and score it).
        strategy (`str`, defaults to "low_confidence"): ranking of adaptive unmasking, one of `STRATEGIES`
            (`remasking` is accepted as the original's name for it).
        threshold (`float` in (0, 1], *optional*): batch-acceptance threshold; `None` uses the generation's.
        protect_structure (`bool`, defaults to True): never prune the prompt's structural tokens (see
            `structural_token_ids`): the image header that says where an image starts and how big it is, and the
            chat-role markers the config lists. They are few; keeping them raised the shapes model's editing at
            keep_ratio 0.5 from 0.910 to 0.933 (0.941 without SPRINT).
        protected_token_ids (`list[int]`, *optional*): more ids never to prune (kept whatever `protect_structure`).
    """

    keep_ratio: float = 0.5
    image_keep_ratio: Optional[float] = None
    text_keep_ratio: Optional[float] = None
    confidence_alpha: float = 0.5
    cache_warmup_steps: int = 1
    strategy: str = "low_confidence"
    threshold: Optional[float] = None
    protect_structure: bool = True
    protected_token_ids: Optional[list] = None

    @classmethod
    def from_setting(cls, value) -> Optional["SprintConfig"]:
        """`None` / `False` -> None (SPRINT off); `True` -> defaults; a dict or `SprintConfig` -> checked settings."""
        if value is None or value is False:
            return None
        if value is True:
            settings = cls()
        elif isinstance(value, SprintConfig):
            settings = cls(**asdict(value))
        elif isinstance(value, dict):
            given = {SPRINT_ALIASES.get(key, key): item for key, item in value.items()}
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(f"`sprint` has unknown settings {unknown}; accepted: {sorted(known)}.")
            settings = cls(**given)
        else:
            raise ValueError(f"`sprint` must be None, a bool, a dict or a SprintConfig, got {type(value).__name__}.")
        settings.check()
        return settings

    def check(self):
        """Raise `ValueError` naming the setting when one is out of range."""
        for name in ("keep_ratio", "image_keep_ratio", "text_keep_ratio"):
            value = getattr(self, name)
            if value is None and name != "keep_ratio":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"`sprint.{name}` must be in (0, 1], got {value!r}.")
        alpha = self.confidence_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`sprint.confidence_alpha` must be in [0, 1], got {alpha!r}.")
        warmup = self.cache_warmup_steps
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"`sprint.cache_warmup_steps` must be an integer >= 1, got {warmup!r}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"`sprint.strategy` must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}.")
        if self.threshold is not None and (
            isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
            or not 0.0 < self.threshold <= 1.0
        ):
            raise ValueError(f"`sprint.threshold` must be None or in (0, 1], got {self.threshold!r}.")
        if not isinstance(self.protect_structure, bool):
            raise ValueError(f"`sprint.protect_structure` must be True or False, got {self.protect_structure!r}.")
        ids = self.protected_token_ids
        if ids is not None and (
            isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__")
            or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids)
        ):
            raise ValueError(f"`sprint.protected_token_ids` must be None or a list of token ids (ints >= 0), "
                             f"got {ids!r}.")

    def ratios(self):
        """(image ratio, text ratio)."""
        image = self.keep_ratio if self.image_keep_ratio is None else self.image_keep_ratio
        text = self.keep_ratio if self.text_keep_ratio is None else self.text_keep_ratio
        return image, text

    def to_dict(self) -> dict:
        return asdict(self)


def sprint_from_original(use_sprint=False, sprint=None, **options):
    """The `sprint=` setting from the original methods' keywords (`use_sprint=True, keep_ratio=..., remasking=...`).

    Options left `None` keep their defaults; options without `use_sprint` (or `sprint`) raise."""
    options = {key: value for key, value in options.items() if value is not None}
    if sprint is not None and options:
        raise ValueError(f"give SPRINT settings either in `sprint=` or as keywords, not both ({sorted(options)}).")
    if sprint is not None:
        return sprint
    if options and not use_sprint:
        raise ValueError(f"SPRINT settings {sorted(options)} were given without `use_sprint=True`.")
    setting = (options or True) if use_sprint else None
    SprintConfig.from_setting(setting)  # bad names or values fail here, before any image is tokenized
    return setting


def structural_token_ids(config) -> list:
    """The ids SPRINT's `protect_structure` keeps: bos, image start / end, `<boi>`, `<uncondition>`, the grid-size
    (reserved) tokens, and `config.structural_token_ids`; those a config does not define are skipped."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    ids = [getattr(text, "bos_token_id", None)]
    ids += [getattr(config, name, None) for name in
            ("image_start_token_id", "image_end_token_id", "boi_token_id", "uncondition_token_id")]
    start = getattr(config, "reserved_token_start_id", None)
    if start is not None:
        ids += range(start, start + (getattr(config, "num_reserved_tokens", 0) or 0))
    ids += list(getattr(config, "structural_token_ids", None) or [])
    return sorted({int(i) for i in ids if i is not None})


def adaptive_quota(active: torch.BoolTensor, step: int, steps: int) -> torch.LongTensor:
    """[B] tokens to commit on this step: ceil(masked / steps_left), steps_left counting this step (at least 1)."""
    remaining = active.sum(dim=-1)
    steps_left = max(1, steps - step)
    return (remaining + steps_left - 1) // steps_left


def strategy_scores(logits, confidence, strategy):
    """[B, L] ranking score of every position (higher = commit first)."""
    if strategy == "low_confidence":
        return confidence
    probs = logits.float().softmax(dim=-1)
    if strategy == "top_k_margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    return (probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)  # minus the entropy


def adaptive_transfers(score, confidence, active, quota, threshold):
    """Boolean [B, L]: the top-`quota` active positions by `score`, plus every active one above `threshold`."""
    score = score.masked_fill(~active, float("-inf"))
    ranks = torch.empty_like(score, dtype=torch.long)
    ranks.scatter_(-1, score.argsort(dim=-1, descending=True, stable=True),
                   torch.arange(score.shape[-1], device=score.device).expand_as(score))
    return ((ranks < quota.unsqueeze(-1)) | (confidence > threshold)) & active


class AttentionProbe:
    """Sums, per row, the attention each prefix position receives from the active block's queries, over the layers
    of the backbone, while active (`with probe.recording(prefix_length, block_length): model(...)`).

    The forward itself is untouched (any attention backend): a hook on each attention module recomputes the block's
    queries from the module's input (through the module's own `project_queries`) and reads the keys the layer has just
    written to the cache."""

    def __init__(self, model):
        self.modules = [m for m in model.modules() if callable(getattr(m, "project_queries", None))
                        and hasattr(m, "layer_idx")]
        if not self.modules:
            raise ValueError("SPRINT pruning found no LLaDA2 attention module (`project_queries`) in the model.")
        self.totals = None
        self.count = 0

    def reset(self):
        self.totals, self.count = None, 0

    def recording(self, prefix_length: int, block_length: int):
        probe = self

        class _Recording:
            def __enter__(self):
                self.handles = [m.register_forward_hook(probe._hook(prefix_length, block_length), with_kwargs=True)
                                for m in probe.modules]
                return probe

            def __exit__(self, *exc):
                for handle in self.handles:
                    handle.remove()
                return False

        return _Recording()

    def _hook(self, prefix_length, block_length):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            cache = kwargs.get("past_key_values")
            if cache is None or prefix_length == 0:
                return
            batch, length, _ = hidden.shape
            hidden = hidden[:, length - block_length :]
            heads, kv_heads, dim = module.num_heads, module.num_key_value_heads, module.head_dim
            position_embeddings = tuple(t[:, length - block_length :] for t in kwargs["position_embeddings"])
            query = module.project_queries(hidden, position_embeddings)
            keys = cache.keys[module.layer_idx][:, :, : cache.get_seq_length() + length]
            groups = heads // kv_heads
            query = query.reshape(batch, kv_heads, groups * block_length, dim).float()
            weights = (query @ keys.float().transpose(-1, -2)) * module.scaling
            mask = kwargs.get("attention_mask")
            if mask is not None:
                mask = mask[:, :, length - block_length :]
                mask = mask.repeat(1, 1, groups, 1)
                if mask.dtype == torch.bool:
                    weights = weights.masked_fill(~mask, float("-inf"))
                else:
                    weights = weights + mask.float()
            received = weights.softmax(dim=-1)[..., :prefix_length].sum(dim=(1, 2)) / (heads * block_length)
            self.totals = received if self.totals is None else self.totals + received
            self.count += 1

        return hook

    def importance(self):
        """[B, prefix] mean attention received (None when nothing was recorded)."""
        return None if self.totals is None else self.totals / self.count


class PrunedPrefixCache:
    """A pruned copy of the exact cache's prefix (`index` [R, n] positions, `valid` [R, n]) with room after it for the
    active block, which every forward overwrites (nothing is appended)."""

    def __init__(self, exact, index: torch.LongTensor, block_length: int):
        self.prefix = index.shape[1]
        self.keys, self.values = [], []
        for keys, values in zip(exact.keys, exact.values):
            shape = (*keys.shape[:2], self.prefix + block_length, keys.shape[-1])
            gather = index[:, None, :, None].expand(*keys.shape[:2], self.prefix, keys.shape[-1])
            pruned_keys, pruned_values = keys.new_empty(shape), values.new_empty((*shape[:-1], values.shape[-1]))
            pruned_keys[:, :, : self.prefix] = keys.gather(2, gather)
            pruned_values[:, :, : self.prefix] = values.gather(2, gather[..., :1].expand(-1, -1, -1, values.shape[-1]))
            self.keys.append(pruned_keys)
            self.values.append(pruned_values)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        end = self.prefix + key_states.shape[-2]
        self.keys[layer_idx][..., self.prefix : end, :] = key_states
        self.values[layer_idx][..., self.prefix : end, :] = value_states
        return self.keys[layer_idx][..., :end, :], self.values[layer_idx][..., :end, :]


class SprintRun:
    """SPRINT state of one `_run_blocks` call: commit confidences, the probe, and the pruned cache of the block."""

    def __init__(self, settings: SprintConfig, model, canvas, block_length: int, image_range=None):
        self.settings = settings
        self.block_length = block_length
        self.canvas = canvas
        self.image_range = image_range
        self.confidence = torch.ones(canvas.tokens.shape, dtype=torch.float32, device=canvas.tokens.device)
        self.prunes = min(settings.ratios()) < 1.0
        self.probe = AttentionProbe(model) if self.prunes else None
        ids = structural_token_ids(model.config) if settings.protect_structure else []
        ids = sorted(set(ids) | set(settings.protected_token_ids or []))
        self.protected_ids = torch.tensor(ids, dtype=torch.long, device=canvas.tokens.device)
        self.view = None
        self.view_mask = None

    def start_block(self):
        self.view, self.view_mask = None, None
        if self.probe is not None:
            self.probe.reset()

    def probing(self, start: int):
        """Context for a forward against the full prefix: records attention when pruning is on."""
        if self.probe is None:
            return contextlib.nullcontext()
        return self.probe.recording(start, self.block_length)

    def after_step(self, commit, confidence, step, cache, allowed, start, batch):
        """Keep the commit-time confidence of the new tokens (mirror rows copy their primary row's), and prune the
        prefix once the block's warm-up steps are done."""
        end = start + self.block_length
        region = self.confidence[:batch, start:end]
        self.confidence[:batch, start:end] = torch.where(commit, confidence.float(), region)
        for row, source in self.canvas.mirrors:
            self.confidence[row, start:end] = self.confidence[source, start:end]
        if self.view is None and self.probe is not None and step + 1 >= self.settings.cache_warmup_steps:
            self.prune(cache, start, allowed)

    def prune(self, cache, start: int, allowed):
        """Build the pruned prefix for the rest of the block from the probe's scores (no-op before any prefix)."""
        importance = self.probe.importance() if self.probe is not None else None
        if importance is None or start == 0:
            return
        tokens, valid = self.canvas.tokens[:, :start], self.canvas.key_valid[:, :start]
        keep = select_prefix(importance, self.confidence[:, :start], tokens, valid, self.settings,
                             self.block_length, self.image_range, self.protected_ids)
        counts = keep.sum(dim=1)
        width = int(counts.max())
        # Kept positions first, in order; rows with fewer fill the tail with masked-out slots.
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]
        slot_valid = torch.arange(width, device=keep.device).unsqueeze(0) < counts.unsqueeze(1)
        self.view = PrunedPrefixCache(cache, order, self.block_length)
        L = self.block_length
        block_mask = allowed[:, :, start : start + L, start : start + L]
        prefix_mask = slot_valid[:, None, None, :].expand(-1, 1, L, -1)
        self.view_mask = torch.cat([prefix_mask, block_mask.expand(prefix_mask.shape[0], -1, -1, -1)], dim=-1)

    def quota_and_commit(self, logits, confidence, active, step, steps, threshold):
        """Adaptive unmasking: boolean [B, L] of the positions to commit on this step."""
        threshold = self.settings.threshold if self.settings.threshold is not None else threshold
        quota = adaptive_quota(active, step, steps)
        score = strategy_scores(logits, confidence, self.settings.strategy)
        return adaptive_transfers(score, confidence, active, quota, threshold)


def select_prefix(importance, confidence, tokens, valid, settings, block_length, image_range=None, protected_ids=None):
    """Boolean [R, P] of prefix positions to keep: per row, the row's first real token, the last `block_length`
    positions and every position holding one of `protected_ids` always; of the other positions of each modality, the
    top `ceil(ratio * count)` by score.

    The protected positions do not use up a modality's budget: with a short prompt they would otherwise fill it, and
    every prompt word outside the last block (a caption's first shape, an instruction's verb) would be dropped."""
    alpha = settings.confidence_alpha
    peak = importance.masked_fill(~valid, 0.0).amax(dim=1, keepdim=True).clamp_min(1e-12)
    score = (1.0 - alpha) * importance / peak + alpha * confidence
    prefix = tokens.shape[1]
    protected = torch.zeros_like(valid)
    protected[:, max(0, prefix - block_length) :] = True
    first = valid.float().argmax(dim=1)
    protected[torch.arange(len(first), device=valid.device), first] = True
    if protected_ids is not None and protected_ids.numel():
        protected |= torch.isin(tokens, protected_ids)
    protected &= valid
    if image_range is not None:
        is_image = (tokens >= image_range[0]) & (tokens < image_range[1])
    else:
        is_image = torch.zeros_like(valid)
    keep = protected.clone()
    for modality, ratio in zip((is_image, ~is_image), settings.ratios()):
        members = valid & modality & ~protected
        budget = torch.ceil(members.sum(dim=1).float() * ratio).long()
        ranked = score.masked_fill(~members, float("-inf"))
        ranks = torch.empty_like(ranked, dtype=torch.long)
        ranks.scatter_(1, ranked.argsort(dim=1, descending=True, stable=True),
                       torch.arange(prefix, device=valid.device).expand_as(ranked))
        keep |= members & (ranks < budget.unsqueeze(1))
    return keep


__all__ = ["SprintConfig", "STRATEGIES", "structural_token_ids"]
