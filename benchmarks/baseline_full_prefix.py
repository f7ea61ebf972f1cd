"""The original LLaDA2.0 block-diffusion `generate()` as a no-cache baseline (batch 1, greedy).

This is the algorithm of the LLaDA2.0 Hub remote code (`LLaDA2MoeModelLM.generate`), written again from its
specification, with the greedy fix at temperature 0 (`tests/data/parity/expected/llm_generate.json` records that
code's outputs; `tests/test_benchmarks.py` checks this file against them). It is what the cached `generate()` of
this project is measured and checked against:

* the canvas is the prompt followed by masks, rounded up to whole blocks; positions are `arange(T)`;
* every denoising step runs ONE forward over the whole prefix `x[:, :block_end]` under an additive 0/-inf
  block-causal mask (a token sees its own block and every earlier block), and keeps the logits of the last
  `block_length` positions; nothing is cached between steps;
* greedy: candidate = argmax, confidence = its softmax probability (masked-out positions get -inf);
* acceptance: if at least `quota[step]` masked positions have confidence > `threshold`, commit all of them,
  otherwise commit the `min(quota[step], #masked)` most confident ones; committed tokens are final;
* a block ends when it has no masks left or after `steps` forwards; generation stops after a block whose
  generated region contains EOS, and the result is cut after the first EOS (inclusive).

The model is any callable `model(input_ids=, attention_mask=, position_ids=)` returning an object with `.logits`
[1, length, vocab] (unshifted: position i predicts token i).
"""

import math
from typing import Optional

import torch


def block_causal_additive_mask(total_length: int, block_length: int, dtype=torch.float32, device=None):
    """[1, 1, T, T] float mask: 0 where the key's block <= the query's block, -inf elsewhere."""
    block = torch.arange(total_length, device=device) // block_length
    allowed = block.unsqueeze(1) >= block.unsqueeze(0)
    mask = torch.zeros(total_length, total_length, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, float("-inf"))
    return mask[None, None]


def step_quotas(block_length: int, steps: int) -> list:
    """Tokens committed at least at each step: block_length // steps, +1 for the first block_length % steps steps."""
    base, remainder = divmod(block_length, steps)
    return [base + (1 if step < remainder else 0) for step in range(steps)]


@torch.no_grad()
def full_prefix_generate(
    model,
    prompt_ids: torch.LongTensor,
    *,
    mask_id: int,
    eos_id: Optional[int],
    gen_length: int = 2048,
    block_length: int = 32,
    steps: int = 32,
    threshold: float = 0.95,
    minimal_topk: int = 1,
    mask_dtype: torch.dtype = torch.float32,
    logits_to_keep: Optional[int] = None,
):
    """Run the original full-prefix algorithm; returns `(generated_ids [1, n], num_forward_passes)`.

    `prompt_ids` is [1, P] or [P]. `logits_to_keep`, when given, is passed to the model so that it projects only the
    last positions (the original computes logits for the whole prefix and slices; None reproduces that).
    """
    if prompt_ids.dim() == 1:
        prompt_ids = prompt_ids.unsqueeze(0)
    if prompt_ids.shape[0] != 1:
        raise ValueError(f"the baseline supports batch size 1, got {prompt_ids.shape[0]} rows.")
    device = prompt_ids.device
    steps = min(steps, gen_length // minimal_topk)
    prompt_length = prompt_ids.shape[1]
    num_blocks = math.ceil((prompt_length + gen_length) / block_length)
    total_length = num_blocks * block_length

    x = torch.full((1, total_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = prompt_ids
    position_ids = torch.arange(total_length, device=device).unsqueeze(0)
    mask = block_causal_additive_mask(total_length, block_length, dtype=mask_dtype, device=device)
    quotas = step_quotas(block_length, steps)
    extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}

    forwards = 0
    for block in range(prompt_length // block_length, num_blocks):
        end = (block + 1) * block_length
        start = end - block_length
        for step in range(steps):
            active = x[0, start:end] == mask_id
            if not active.any():
                break
            # The whole prefix, every step: no key/value is reused between forwards.
            logits = model(
                input_ids=x[:, :end],
                attention_mask=mask[:, :, :end, :end],
                position_ids=position_ids[:, :end],
                **extra,
            ).logits
            forwards += 1
            block_logits = logits[0, -block_length:].float()
            probs = torch.softmax(block_logits, dim=-1)
            confidence, candidates = probs.max(dim=-1)
            confidence = torch.where(active, confidence, torch.full_like(confidence, float("-inf")))

            above = confidence > threshold
            if int(above.sum()) >= quotas[step]:
                commit = above
            else:
                k = min(quotas[step], int(active.sum()))
                commit = torch.zeros_like(active)
                commit[torch.topk(confidence, k).indices] = True
            x[0, start:end] = torch.where(commit, candidates, x[0, start:end])
        if eos_id is not None and (x[0, prompt_length:end] == eos_id).any():
            break

    generated = x[:, prompt_length : prompt_length + gen_length]
    if eos_id is not None:
        hits = (generated[0] == eos_id).nonzero()
        if len(hits):
            generated = generated[:, : int(hits[0]) + 1]
    return generated, forwards


__all__ = ["block_causal_additive_mask", "full_prefix_generate", "step_quotas"]
