"""The SigVQ conditioner of LLaDA2.0-Uni's decoder: VQ codes -> the caption features the Z-Image transformer reads.

Each code of the h x w grid is repeated in a 2 x 2 block (nearest upsampling, fixed at 2 whatever the output
resolution), the 2h x 2w grid is read row by row, and every id goes through an embedding table and a
Linear -> SiLU -> Linear projector (reference §7.1). The parameter names are those of the original
`sigvq_embedding.pt` (`prior_token_embedding.*`, `prior_projector.net.0.proj.*`, `prior_projector.net.2.*`), which
is exactly the layout of diffusers' `FeedForward(activation_fn="linear-silu")`.
"""

from typing import Sequence, Tuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class LLaDA2UniSemanticEmbedder(ModelMixin, ConfigMixin):
    r"""
    Embeds a grid of image-token codes (offset-free, `0 <= code < vocab_size`) into `cap_feats` for
    `ZImageTransformer2DModel`.

    Args:
        vocab_size (`int`, defaults to 16384): size of the VQ codebook.
        embedding_dim (`int`, defaults to 4096): width of the features; the decoder's `cap_feat_dim`.
        upsample_factor (`int`, defaults to 2): each code becomes an `upsample_factor` x `upsample_factor` block.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, vocab_size: int = 16384, embedding_dim: int = 4096, upsample_factor: int = 2):
        super().__init__()
        self.prior_token_embedding = nn.Embedding(vocab_size, embedding_dim)
        self.prior_projector = FeedForward(
            embedding_dim, dim_out=embedding_dim, inner_dim=embedding_dim, activation_fn="linear-silu"
        )

    def upsample_ids(self, token_ids: torch.LongTensor, grid_size: Tuple[int, int]) -> torch.LongTensor:
        """[B, h*w] codes -> [B, (f*h)*(f*w)] codes of the nearest-upsampled grid, row-major."""
        height, width = check_grid(token_ids, grid_size, self.config.vocab_size)
        factor = self.config.upsample_factor
        grid = token_ids.reshape(token_ids.shape[0], height, width)
        grid = grid.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
        return grid.reshape(token_ids.shape[0], -1)

    def forward(self, token_ids: torch.LongTensor, grid_size: Tuple[int, int]) -> torch.Tensor:
        """[B, h*w] codes on an (h, w) grid -> [B, f*f*h*w, embedding_dim] caption features."""
        ids = self.upsample_ids(token_ids, grid_size)
        return self.prior_projector(self.prior_token_embedding(ids))


def check_grid(token_ids, grid_size: Sequence[int], vocab_size: int) -> Tuple[int, int]:
    """Validate codes [B, h*w] against `grid_size` = (h, w) and the codebook; returns (h, w)."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError("`image_tokens` must be an integer tensor [batch, h*w] of offset-free codes.")
    if token_ids.dim() != 2:
        raise ValueError(f"`image_tokens` must have 2 dimensions [batch, h*w], got shape {tuple(token_ids.shape)}.")
    if (
        not isinstance(grid_size, (tuple, list))
        or len(grid_size) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in grid_size)
    ):
        raise ValueError(f"`grid_size` must be two positive ints (h, w), got {grid_size!r}.")
    height, width = grid_size
    if token_ids.shape[1] != height * width:
        raise ValueError(
            f"`image_tokens` holds {token_ids.shape[1]} tokens per image, but `grid_size`={height}x{width} needs "
            f"{height * width}."
        )
    if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab_size):
        raise ValueError(
            f"`image_tokens` must be offset-free codes in [0, {vocab_size}); got values in "
            f"[{int(token_ids.min())}, {int(token_ids.max())}] (subtract `image_token_offset` from vocabulary ids)."
        )
    return height, width


__all__ = ["LLaDA2UniSemanticEmbedder", "check_grid"]
