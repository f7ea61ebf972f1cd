"""Run diffusers' `LLaDA2Pipeline` on this project's backbone, for the speed and agreement comparison.

`LLaDA2Pipeline` (diffusers >= 0.38) calls `model(x[:, :window_end], attention_mask=<2-D padding mask>,
position_ids=...)` on every step and reads `.logits`. It leaves the block-causal structure to the model, which the
LLaDA2 Hub remote code builds itself from the 2-D mask. Our backbone takes the mask it is given and reads a 2-D mask as
padding only (full bidirectional attention), so `BlockCausalAdapter` turns the pipeline's 2-D mask into the block-causal
4-D mask of the original `generate()`: a query sees every valid key of its own block and of earlier blocks. Nothing
else changes; the pipeline still re-runs the whole window on every step and gets logits for every position.
"""

import torch
from torch import nn


class BlockCausalAdapter(nn.Module):
    """Wraps a LLaDA2 backbone for `LLaDA2Pipeline`: 2-D padding mask in, block-causal 4-D mask to the model.
    `forward_passes` counts the calls."""

    def __init__(self, model, block_length: int):
        super().__init__()
        self.model = model
        self.block_length = block_length
        self.forward_passes = 0

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        batch, length = input_ids.shape
        key_valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                     else attention_mask.bool())
        block = torch.arange(length, device=input_ids.device) // self.block_length
        allowed = (block.unsqueeze(1) >= block.unsqueeze(0)).unsqueeze(0) & key_valid.unsqueeze(1)
        allowed |= torch.eye(length, dtype=torch.bool, device=input_ids.device)  # a padding query sees itself
        self.forward_passes += 1
        return self.model(input_ids=input_ids, attention_mask=allowed.unsqueeze(1), position_ids=position_ids,
                          **kwargs)


def diffusers_generate(model, prompt_ids, *, gen_length, block_length, steps, threshold, mask_id, eos_id):
    """Greedy `LLaDA2Pipeline` decoding with editing off (the LLaDA2.0 setting); returns (generated ids [1, n] cut
    after the first EOS, forward passes)."""
    from diffusers import BlockRefinementScheduler, LLaDA2Pipeline

    adapter = BlockCausalAdapter(model, block_length)
    pipe = LLaDA2Pipeline(model=adapter, scheduler=BlockRefinementScheduler(block_length=block_length), tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(input_ids=prompt_ids, gen_length=gen_length, block_length=block_length, num_inference_steps=steps,
               temperature=0.0, sampling_method="greedy", threshold=threshold, editing_threshold=None,
               eos_early_stop=False, eos_token_id=eos_id, mask_token_id=mask_id, output_type="seq")
    generated = out.sequences
    if eos_id is not None:
        hits = (generated[0] == eos_id).nonzero()
        if len(hits):
            generated = generated[:, : int(hits[0]) + 1]
    return generated, adapter.forward_passes


__all__ = ["BlockCausalAdapter", "diffusers_generate"]
