"""LLaDA2.0-Uni: the LLaDA2 MoE diffusion LLM that reads and writes images as SigLIP-VQ tokens.

The image tokenizer is transformers' own GLM-Image vision encoder + VQ codebook (`GlmImageVisionModel`,
`GlmImageVQVAE`): the original tokenizer is that lineage and the parity fixtures match it bit for bit, so nothing is
re-implemented here. Images become offset-free code ids through `get_image_tokens`; the ids enter the LLM vocabulary
at `image_token_offset + code`. For text-only calls the model is exactly the backbone (same forward, same generate).
"""


import torch
from torch import nn
from transformers.modeling_utils import PreTrainedModel
from transformers.models.glm_image.modeling_glm_image import GlmImageVisionModel, GlmImageVQVAE

from .configuration_llada2_uni import LLaDA2UniConfig
from .generation_config_llada2_uni import defaults_for_model
from .generation_modes_llada2_uni import LLaDA2UniGenerationMixin
from .generation_tasks_llada2_uni import LLaDA2UniTasksMixin
from .modeling_llada2_moe import LLaDA2MoeForCausalLM, LLaDA2MoeModel, LLaDA2MoePreTrainedModel


class LLaDA2UniForConditionalGeneration(LLaDA2UniGenerationMixin, LLaDA2UniTasksMixin, LLaDA2MoeForCausalLM):
    """Backbone + LM head (keys `model.*`, `lm_head.*`, as in the text-only model) + `visual.*` and `vqmodel.*`.
    `generate()` is the one entry of every task (`generation_modes_llada2_uni.py`); the original API's
    `understand_image` / `generate_image` / `edit_image` wrap it (`generation_tasks_llada2_uni.py`)."""

    config_class = LLaDA2UniConfig
    config: LLaDA2UniConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _no_split_modules = ["LLaDA2MoeDecoderLayer", "GlmImageVisionBlock"]

    def __init__(self, config: LLaDA2UniConfig):
        LLaDA2MoePreTrainedModel.__init__(self, config)
        text_config = config.text_config
        self.model = LLaDA2MoeModel(text_config)
        self.vocab_size = text_config.vocab_size
        self.lm_head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=False)
        self.visual = GlmImageVisionModel(config.vision_config)
        self.vqmodel = GlmImageVQVAE(config.vq_config)
        self.post_init()
        self.generation_config = defaults_for_model(config, validate=False)  # every default, saved with the model

    def forward(self, input_ids=None, pixel_values=None, image_grid_thw=None, image_tokens=None, **kwargs):
        """The backbone's forward; images given as `pixel_values` + `image_grid_thw` (or as `image_tokens` codes)
        first replace the image placeholders of `input_ids` (see `insert_image_tokens`)."""
        if input_ids is not None and (pixel_values is not None or image_tokens is not None):
            input_ids = self.insert_image_tokens(input_ids, pixel_values, image_grid_thw, image_tokens)
            labels = kwargs.get("labels")
            if labels is not None:
                # Supervised image positions name the placeholder; their targets are the codes just written there.
                kwargs["labels"] = torch.where(labels == -100, labels, input_ids)
        return super().forward(input_ids=input_ids, **kwargs)

    @torch.no_grad()
    def get_image_tokens(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor) -> torch.LongTensor:
        """
        Tokenize packed images into offset-free VQ code ids.

        Args:
            pixel_values (`torch.FloatTensor` [total patches, 3 * patch_size**2]): the image processor's output.
            image_grid_thw (`torch.LongTensor` [num_images, 3]): (1, h, w) per image.

        Returns:
            `torch.LongTensor` [total patches]: codes in [0, codebook_size), row-major per image, images in order.
        """
        grids = _check_grids(pixel_values, image_grid_thw, self.config.vision_config)
        dtype = self.visual.patch_embed.proj.weight.dtype
        features = self.visual(pixel_values=pixel_values.to(dtype), grid_thw=image_grid_thw).last_hidden_state
        tokens, start = [], 0
        for _, h, w in grids:
            grid_features = features[start : start + h * w].reshape(h, w, -1).permute(2, 0, 1).unsqueeze(0)
            tokens.append(self.vqmodel.encode(grid_features).image_tokens.reshape(-1))
            start += h * w
        return torch.cat(tokens)

    def image_ids_to_vocab(self, image_tokens: torch.LongTensor) -> torch.LongTensor:
        """Offset-free codes -> LLM vocabulary ids (raises on codes outside the codebook)."""
        codebook = self.config.codebook_size
        if image_tokens.numel() and (image_tokens.min() < 0 or image_tokens.max() >= codebook):
            raise ValueError(f"`image_tokens` must hold codes in [0, {codebook}); got values in "
                             f"[{int(image_tokens.min())}, {int(image_tokens.max())}].")
        return image_tokens + self.config.image_token_offset

    def image_placeholder_mask(self, input_ids: torch.LongTensor) -> torch.BoolTensor:
        """Positions the processor left for image codes: runs of `<|image|>` ids directly after `<boi>`.

        (`<|image|>` also opens every image header, but there it is followed by the size tokens, never preceded by
        `<boi>` or another placeholder, so the two uses cannot be confused.)
        """
        soi, boi = self.config.image_start_token_id, self.config.boi_token_id
        if soi is None or boi is None:
            raise ValueError("the config lacks `image_start_token_id` / `boi_token_id`; image inputs are unavailable.")
        is_soi = input_ids == soi
        # For each position, the index of the last token before it that is not `<|image|>` (-1 if none): a position
        # is a placeholder when it is `<|image|>` and that token is `<boi>`.
        index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last_other = torch.where(is_soi, -1, index).cummax(dim=1).values
        previous = input_ids.gather(1, last_other.clamp(min=0))
        return is_soi & (last_other >= 0) & (previous == boi)

    def insert_image_tokens(self, input_ids, pixel_values=None, image_grid_thw=None, image_tokens=None):
        """Replace the image placeholders of `input_ids` by vocabulary ids of the images' VQ codes.

        Give either `pixel_values` + `image_grid_thw` (the images are tokenized here) or `image_tokens` (offset-free
        codes, e.g. cached from an earlier call). Codes fill the placeholders in reading order (row by row, images in
        order), so the placeholder count must equal the number of codes.
        """
        mask = self.image_placeholder_mask(input_ids)
        if image_tokens is None:
            if pixel_values is None or image_grid_thw is None:
                if mask.any():
                    raise ValueError("`input_ids` holds image placeholders but no `pixel_values` / `image_grid_thw` "
                                     "(or `image_tokens`) were given.")
                return input_ids
            image_tokens = self.get_image_tokens(pixel_values, image_grid_thw)
        image_tokens = image_tokens.reshape(-1).to(input_ids.device)
        if int(mask.sum()) != image_tokens.numel():
            raise ValueError(
                f"`input_ids` has {int(mask.sum())} image placeholders but the images give {image_tokens.numel()} "
                "tokens; build the prompt with the processor from the same images."
            )
        filled = input_ids.clone()
        filled[mask] = self.image_ids_to_vocab(image_tokens)
        return filled

    @torch.no_grad()
    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """
        Grow or shrink the vocabulary by text ids while every image code keeps its learned rows.

        The codes are the top `codebook_size` ids, so transformers' resize (which adds or cuts rows at the end) would
        drop or shift them. Here the rows added (or removed) are text ids just below `image_token_offset`; the code
        rows move with the offset, which is updated in the config. After `tokenizer.add_tokens(...)`, call
        `model.resize_token_embeddings(len(tokenizer) + model.config.codebook_size)` and set the processor's
        `image_token_offset` to `model.config.image_token_offset`. New rows start at the mean of the old rows, as
        transformers' `mean_resizing` keeps the matrix's mean (`mean_resizing=False`: the model's initialiser). A
        vocabulary whose codes are not its top ids resizes at the end, as in transformers, but never below the last
        code.
        """
        old = self.get_input_embeddings().weight.shape[0]
        if new_num_tokens is None:
            return self.get_input_embeddings()
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
                raise ValueError(f"`pad_to_multiple_of` must be a positive int, got {pad_to_multiple_of!r}.")
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        offset, codebook = self.config.image_token_offset, self.config.codebook_size
        delta = new_num_tokens - old
        if offset + codebook != old:  # codes below the top: plain resize at the end, codes stay where they are
            if new_num_tokens < offset + codebook:
                raise ValueError(f"`new_num_tokens` ({new_num_tokens}) would cut image codes (ids {offset} to "
                                 f"{offset + codebook - 1}); give at least {offset + codebook}.")
            return super().resize_token_embeddings(new_num_tokens, mean_resizing=mean_resizing)
        text_config = self.config.get_text_config()
        used = [getattr(text_config, name, None) for name in ("eos_token_id", "pad_token_id", "mask_token_id",
                                                               "bos_token_id")]
        used += [getattr(self.config, name, None) for name in ("image_start_token_id", "image_end_token_id",
                                                               "boi_token_id", "uncondition_token_id")]
        highest = max([int(i) for i in used if isinstance(i, int)] + [-1])
        if offset + delta <= highest:
            raise ValueError(f"`new_num_tokens` ({new_num_tokens}) would remove text id {highest}, a special token "
                             f"of the config; the smallest allowed is {highest + 1 + codebook}.")
        if delta == 0:
            return self.get_input_embeddings()
        for module in (self.get_input_embeddings(), self.get_output_embeddings()):
            weight = module.weight
            text, codes = weight[:offset], weight[offset:]
            if delta > 0:
                added = weight.float().mean(0, keepdim=True).expand(delta, -1).to(weight.dtype)
                if not mean_resizing:
                    added = torch.empty(delta, weight.shape[1], dtype=weight.dtype, device=weight.device)
                    added.normal_(0.0, getattr(text_config, "initializer_range", 0.02))
                rows = torch.cat([text, added, codes])
            else:
                rows = torch.cat([text[: offset + delta], codes])
            module.weight = nn.Parameter(rows.contiguous(), requires_grad=weight.requires_grad)
            if isinstance(module, nn.Embedding):
                module.num_embeddings = rows.shape[0]
            else:
                module.out_features = rows.shape[0]
        self.vocab_size = text_config.vocab_size = new_num_tokens
        self.config.image_token_offset = text_config.image_token_offset = offset + delta
        return self.get_input_embeddings()

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, (nn.LayerNorm, nn.Conv2d)):
            PreTrainedModel._init_weights(self, module)
        else:
            super()._init_weights(module)


def _check_grids(pixel_values, image_grid_thw, vision_config) -> list:
    patch = vision_config.patch_size
    width = vision_config.in_channels * patch * patch
    if pixel_values.dim() != 2 or pixel_values.shape[1] != width:
        raise ValueError(
            f"`pixel_values` must be [total patches, {width}] (the image processor's output), got "
            f"{list(pixel_values.shape)}."
        )
    if image_grid_thw.dim() != 2 or image_grid_thw.shape[1] != 3:
        raise ValueError(f"`image_grid_thw` must be [num_images, 3], got {list(image_grid_thw.shape)}.")
    grids = [tuple(int(v) for v in row) for row in image_grid_thw.tolist()]
    for t, h, w in grids:
        if t != 1 or h <= 0 or w <= 0:
            raise ValueError(f"`image_grid_thw` rows must be (1, h >= 1, w >= 1), got {(t, h, w)}.")
    total = sum(h * w for _, h, w in grids)
    if total != pixel_values.shape[0]:
        raise ValueError(
            f"`image_grid_thw` describes {total} patches but `pixel_values` holds {pixel_values.shape[0]}."
        )
    return grids


__all__ = ["LLaDA2UniForConditionalGeneration"]
