"""The masked-diffusion training objective of LLaDA2 (backbone-and-performance.md §5.1, §7), used by `forward()`.

Given clean sequences x_0 and the positions to supervise, each sample draws a mask ratio t, masks each supervised
position with probability t, and the model predicts the masked tokens (unshifted: the logits at position i predict
token i).

* "block" objective (BD3LM / LLaDA2.0): the input is [x_t ; x_0] (2L tokens, positions 0..L-1 twice) under a
  three-part mask, with blocks b(i) = i // block_length:
      x_t query -> x_t keys of the same block (bidirectional)      M_BD
      x_t query -> x_0 keys of strictly earlier blocks              M_OBC
      x_0 query -> x_0 keys of the same or earlier blocks           M_BC   (x_0 never sees x_t)
  and the loss is read from the x_t half. This is exactly what block decoding sees at inference: the finished
  blocks clean, the current block partly masked.
* "full" objective (MDLM): the input is x_t alone, bidirectional over the real tokens.

* "cross_entropy": no noising here. The inputs are run as given (under the caller's mask) and the loss is the plain
  unshifted cross-entropy of their logits against `labels`: for callers that noise the inputs themselves.

The objective is a setting (`config.diffusion_training["objective"]`, or `forward(objective=...)` for one call), never
inferred from the batch: a batch that happens to hold the mask token id trains exactly like one that does not.

Loss: with `loss_weighting="inverse_t"` (the ELBO, paper and dllm), sum over masked positions of CE / t divided by
the number of supervised positions; with "none" (dFactory), the mean CE over masked positions. Complementary
masking (paper, post-training) adds, for every sample, the copy whose mask is the complement on the supervised
positions (ratio 1 - t), so each supervised token is predicted exactly once per pair.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

DIFFUSION_OBJECTIVES = ("block", "full")  # the ones that mask clean inputs themselves
OBJECTIVES = DIFFUSION_OBJECTIVES + ("cross_entropy",)
WEIGHTINGS = ("inverse_t", "none")


@dataclass
class DiffusionTrainingArguments:
    """The objective's settings (read from the config's `diffusion_training` dict; see `from_config`)."""

    objective: str = "block"
    block_length: Optional[int] = None  # None: the config's block_length (32 in the releases)
    mask_ratio_min: float = 0.001
    mask_ratio_max: float = 1.0
    loss_weighting: str = "inverse_t"
    complementary_masking: bool = False

    @classmethod
    def from_config(cls, config, objective: Optional[str] = None) -> "DiffusionTrainingArguments":
        """The settings of `config` (a text config); `objective`, when given, replaces the configured one."""
        settings = dict(getattr(config, "diffusion_training", None) or {})
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"`diffusion_training` has unknown keys {unknown}; accepted: "
                             f"{sorted(cls.__dataclass_fields__)}.")
        if objective is not None:
            if objective not in OBJECTIVES:
                raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}.")
            settings["objective"] = objective
        args = cls(**settings)
        if args.block_length is None:
            args.block_length = config.block_length
        args.validate()
        return args

    def validate(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`diffusion_training['objective']` must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.loss_weighting not in WEIGHTINGS:
            raise ValueError(f"`diffusion_training['loss_weighting']` must be one of {WEIGHTINGS}, got "
                             f"{self.loss_weighting!r}.")
        if not (isinstance(self.block_length, int) and self.block_length > 0):
            raise ValueError(f"`diffusion_training['block_length']` must be a positive int, got {self.block_length!r}.")
        if not 0.0 < self.mask_ratio_min <= self.mask_ratio_max <= 1.0:
            raise ValueError(f"`diffusion_training` mask ratios need 0 < mask_ratio_min <= mask_ratio_max <= 1, got "
                             f"[{self.mask_ratio_min}, {self.mask_ratio_max}].")


def block_diffusion_mask(key_padding: torch.Tensor, block_length: int, with_clean: bool = True) -> torch.Tensor:
    """Boolean attention mask [B, 1, Q, K] (True = may attend) of the training input.

    `key_padding` [B, L] is True at real tokens. With `with_clean` the input is [x_t ; x_0] (Q = K = 2L) under the
    three-part mask; without it, x_t alone (Q = K = L) attends bidirectionally. Padding keys are never attended, except
    by the padding query itself (its output is unused), so no softmax row is empty.
    """
    length = key_padding.shape[1]
    device = key_padding.device
    if with_clean:
        block = torch.arange(length, device=device) // block_length
        same = block[:, None] == block[None, :]
        earlier = block[None, :] < block[:, None]
        up_to = block[None, :] <= block[:, None]
        noisy_rows = torch.cat([same, earlier], dim=1)
        clean_rows = torch.cat([torch.zeros_like(same), up_to], dim=1)
        pattern = torch.cat([noisy_rows, clean_rows], dim=0)
        keys = torch.cat([key_padding, key_padding], dim=1)
    else:
        pattern = torch.ones(length, length, dtype=torch.bool, device=device)
        keys = key_padding
    allowed = pattern[None, None] & keys[:, None, None, :]
    eye = torch.eye(keys.shape[1], dtype=torch.bool, device=device)
    return allowed | (eye[None, None] & ~keys[:, None, :, None])


def sample_masks(supervised: torch.Tensor, args: DiffusionTrainingArguments, generator=None):
    """Draw t per sample and the masked positions. Returns (masked [N, L] bool, t [N], source row [N]) where N = B, or
    2B with complementary masking (rows B..2B-1 repeat rows 0..B-1 with the complementary mask, ratio 1 - t)."""
    batch, length = supervised.shape
    device = supervised.device
    low, high = args.mask_ratio_min, args.mask_ratio_max
    t = low + (high - low) * torch.rand(batch, device=device, generator=generator)
    masked = (torch.rand(batch, length, device=device, generator=generator) < t[:, None]) & supervised
    rows = torch.arange(batch, device=device)
    if args.complementary_masking:
        masked = torch.cat([masked, supervised & ~masked])
        t = torch.cat([t, (1 - t).clamp(min=low)])
        rows = torch.cat([rows, rows])
    return masked, t, rows


def diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                   supervised_count: torch.Tensor, weighting: str) -> torch.Tensor:
    """The objective from the x_t logits [N, L, V] (float32), clean targets [N, L], masked positions [N, L]."""
    if not masked.any():
        return logits.sum() * 0.0  # nothing masked in this batch: zero loss, graph kept for the optimizer step
    ce = F.cross_entropy(logits[masked], targets[masked], reduction="none")
    if weighting == "none":
        return ce.mean()
    weights = (1.0 / t)[:, None].expand_as(masked)[masked]
    return (ce * weights).sum() / supervised_count.clamp(min=1)


def masked_diffusion_forward(model, input_ids, labels, attention_mask, mask_token_id, args=None, **kwargs):
    """Run `model` (the backbone forward, called as `model(input_ids=..., attention_mask=..., position_ids=...)`)
    on the noised input and return (loss, logits of x_t [N, L, V], the model's outputs).

    `labels` mark the supervised positions (not -100); their values must be the clean tokens of `input_ids`.
    `attention_mask` [B, L] marks real tokens (1) and padding (0) and may be None. `args` (one of the diffusion
    objectives) defaults to the model config's settings.
    """
    if args is None:
        args = DiffusionTrainingArguments.from_config(model.config.get_text_config())
    if args.objective not in DIFFUSION_OBJECTIVES:
        raise ValueError(f"masked_diffusion_forward runs the objectives {DIFFUSION_OBJECTIVES}, not {args.objective!r}.")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"the {args.objective!r} objective takes a 2-D padding `attention_mask` [B, L] (it builds its "
                         "own block mask); for a custom mask on inputs you noised yourself, use "
                         "objective='cross_entropy'.")
    if labels.shape != input_ids.shape:
        raise ValueError(f"`labels` must have the shape of `input_ids` {list(input_ids.shape)}, got "
                         f"{list(labels.shape)}.")
    if mask_token_id is None:
        raise ValueError("the config has no `mask_token_id`; the masked-diffusion objective needs it.")
    supervised = labels != -100
    if (labels[supervised] != input_ids[supervised]).any():
        raise ValueError(f"`labels` must equal `input_ids` where they are not -100 (they mark which clean tokens are "
                         f"supervised; the {args.objective!r} objective masks them itself). For inputs you noised "
                         "yourself, use objective='cross_entropy'.")
    padding = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    if (supervised & ~padding).any():
        raise ValueError("`labels` supervise padding positions (attention_mask 0); set them to -100.")
    masked, t, rows = sample_masks(supervised, args, generator=kwargs.pop("generator", None))
    clean = input_ids[rows]
    noisy = clean.masked_fill(masked, mask_token_id)
    padding = padding[rows]
    length = input_ids.shape[1]
    positions = torch.arange(length, device=input_ids.device).expand(len(rows), -1)
    with_clean = args.objective == "block"
    if with_clean:
        model_input = torch.cat([noisy, clean], dim=1)
        positions = torch.cat([positions, positions], dim=1)
    else:
        model_input = noisy
    mask = block_diffusion_mask(padding, args.block_length, with_clean=with_clean)
    outputs = model(input_ids=model_input, attention_mask=mask, position_ids=positions, **kwargs)
    logits = outputs.logits[:, :length]
    loss = diffusion_loss(logits, clean, masked, t, supervised[rows].sum(), args.loss_weighting)
    return loss, logits, outputs


__all__ = [
    "DIFFUSION_OBJECTIVES",
    "OBJECTIVES",
    "DiffusionTrainingArguments",
    "block_diffusion_mask",
    "diffusion_loss",
    "masked_diffusion_forward",
    "sample_masks",
]
