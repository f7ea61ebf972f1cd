"""Build an untrained tiny LLaDA2.0-Uni of the real architecture for the shapes world, every part from scratch.

Same classes as the 16B release, small sizes: a word-level tokenizer with the release's special tokens, the SigLIP-VQ
image tokenizer (`GlmImageVisionModel` + `GlmImageVQVAE`, 16 px patches), the MoE diffusion LLM, the SigVQ embedder,
a Z-Image decoder (diffusers `ZImageTransformer2DModel`) and an `AutoencoderKL`. The training scripts in this folder
start from it; `save_pipeline` writes the converted-folder layout that `LLaDA2UniPipeline.from_pretrained` reads.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mask|>", "<|image|>", "<|/image|>", "<boi>", "<uncondition>",
            "<role>", "</role>", "<|role_end|>"]
NUM_RESERVED = 17  # grid sides 0..16 tokens
# Words of the processor's templates (system prompts, roles): they must tokenize to known ids.
TEMPLATE_WORDS = ("SYSTEM HUMAN ASSISTANT You are a an text - to image generation assistant . multimodal understanding "
                  "editing with thinking process interleaved").split()


@dataclass
class ShapesModelSizes:
    """Sizes of every part (defaults: a few MB of weights in all, trainable on 2 CPU cores)."""

    codebook_size: int = 64
    image_size: int = 48  # pixels a side; 16 px patches -> a 3 x 3 token grid
    hidden_size: int = 128
    layers: int = 4
    experts: int = 8
    experts_per_token: int = 2
    expert_size: int = 64
    vision_hidden: int = 64
    vision_depth: int = 2
    cap_dim: int = 64
    # The release rotates half of each head's dims with base 600000, tuned for 8k-token contexts: over this world's
    # ~50-token rows only the fastest of those 8 frequencies turn, and the tiny LLM then hardly learns where an image
    # token sits (position questions: 27% after the first LLM cycle). Base 10000 on the whole head: 45%.
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    decoder_dim: int = 96
    decoder_layers: int = 3
    decoder_heads: int = 2
    vae_channels: tuple = field(default=(16, 32, 32, 32))


def build_tokenizer(words) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` + the template words, with the release's special and reserved tokens."""
    specials = SPECIALS + [f"<|reserved_token_{n}|>" for n in range(NUM_RESERVED)]
    vocabulary = ["[UNK]"] + sorted({w.lower() for w in words} | {w.lower() for w in TEMPLATE_WORDS})
    vocab = {token: i for i, token in enumerate(vocabulary + specials)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    # Questions start with a capital; one lower-case vocabulary serves every text (special tokens are not normalised).
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mask|>")


# Editing's text CFG scale recorded in generation_config.json: the release's 4.0 over-pushes this tiny model (held-out edits:
# 33% done at 4.0, 46% at 2.0, 48% at 1.0, i.e. without guidance).
EDIT_CFG = 1.0
# Text-to-image CFG (also the image phase of thinking and the pictures of interleaved answers). The release's 2.0 was
# best for the early cycles; for the `llm10` / `llm11` models text-to-image is the same at 1.0 and 2.0 (279 held-out
# captions), thinking pictures 0.946 / 0.953 against 0.935 / 0.950 and interleaved answers 0.380 / 0.452 against
# 0.186 / 0.244, at half the forwards (docs/shapes.md, "Guidance").
T2I_CFG = 1.0


def build_processor(tokenizer, sizes: ShapesModelSizes):
    from transformers_llada_uni import LLaDA2UniImageProcessor, LLaDA2UniProcessor

    # Every path keeps a shapes image at its own size: one 16 px patch per token, a 3 x 3 grid for 48 px (the release
    # resizes understanding inputs to >= 128 px and edit sources to ~512 px, far beyond this world's images), and
    # text-to-image draws at that size, one decoded 16 px cell per token.
    area = sizes.image_size ** 2
    image_processor = LLaDA2UniImageProcessor(resize_factor=16, min_pixels=area, max_pixels=area,
                                              edit_max_cells=area // 16 ** 2)
    return LLaDA2UniProcessor(image_processor=image_processor, tokenizer=tokenizer,
                              image_token_offset=len(tokenizer), codebook_size=sizes.codebook_size)


def build_model(tokenizer, sizes: ShapesModelSizes, seed: int = 0):
    """The composite `LLaDA2UniForConditionalGeneration`; image codes follow the text vocabulary."""
    from transformers_llada_uni import LLaDA2UniConfig, LLaDA2UniForConditionalGeneration

    vocab = tokenizer.get_vocab()
    heads = max(sizes.hidden_size // 32, 2)
    text_config = dict(
        vocab_size=len(tokenizer) + sizes.codebook_size, hidden_size=sizes.hidden_size,
        intermediate_size=2 * sizes.hidden_size, moe_intermediate_size=sizes.expert_size,
        num_hidden_layers=sizes.layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
        head_dim=sizes.hidden_size // heads, num_experts=sizes.experts, num_experts_per_tok=sizes.experts_per_token,
        n_group=2, topk_group=2, max_position_embeddings=512, block_length=16, rope_theta=sizes.rope_theta,
        partial_rotary_factor=sizes.partial_rotary_factor,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], mask_token_id=vocab["<|mask|>"],
    )
    config = LLaDA2UniConfig(
        text_config=text_config,
        vision_config=dict(hidden_size=sizes.vision_hidden, intermediate_size=2 * sizes.vision_hidden,
                           num_heads=2, depth=sizes.vision_depth, patch_size=16, image_size=sizes.image_size),
        vq_config=dict(num_embeddings=sizes.codebook_size, embed_dim=16, latent_channels=sizes.vision_hidden),
        image_token_offset=len(tokenizer), image_start_token_id=vocab["<|image|>"],
        image_end_token_id=vocab["<|/image|>"], boi_token_id=vocab["<boi>"],
        uncondition_token_id=vocab["<uncondition>"], reserved_token_start_id=vocab["<|reserved_token_0|>"],
        num_reserved_tokens=NUM_RESERVED,
        structural_token_ids=[vocab["<role>"], vocab["</role>"], vocab["<|role_end|>"]],  # kept whole by SPRINT
    )
    torch.manual_seed(seed)
    model = LLaDA2UniForConditionalGeneration(config)
    model.generation_config = generation_config(config, sizes)
    return model


def generation_config(config, sizes: ShapesModelSizes):
    """The shapes model's generation defaults: text-to-image draws at the training size, one decoded 16 px cell per
    token; answers and reasoning are a few words, so their budgets are short; drawing and editing run without
    guidance (`T2I_CFG`, `EDIT_CFG`)."""
    from transformers_llada_uni.generation_config_llada2_uni import defaults_for_model

    return defaults_for_model(config, image_height=sizes.image_size, image_width=sizes.image_size,
                              pixels_per_token=16, guidance_scale=T2I_CFG, edit_guidance_scale=EDIT_CFG,
                              max_new_tokens=64, thinking_max_new_tokens=64)


def build_pixel_side(sizes: ShapesModelSizes, seed: int = 0) -> dict:
    """Semantic embedder, normal and turbo decoders (same shape), VAE and both schedulers."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    from diffusers_llada_uni import LLaDA2UniSemanticEmbedder
    from diffusers_llada_uni.hub_layout import default_scheduler

    torch.manual_seed(seed)
    head_dim = sizes.decoder_dim // sizes.decoder_heads
    axes = [head_dim // 4, 3 * head_dim // 8, head_dim - head_dim // 4 - 3 * head_dim // 8]

    def decoder():
        model = ZImageTransformer2DModel(dim=sizes.decoder_dim, n_layers=sizes.decoder_layers, n_refiner_layers=1,
                                         n_heads=sizes.decoder_heads, n_kv_heads=sizes.decoder_heads,
                                         cap_feat_dim=sizes.cap_dim, axes_dims=axes,
                                         axes_lens=[32768, 1024, 1024])
        with torch.no_grad():  # the constructor leaves the pad tokens uninitialised
            model.x_pad_token.normal_(0, 0.02)
            model.cap_pad_token.normal_(0, 0.02)
        return model

    blocks = len(sizes.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=sizes.vae_channels, layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
        norm_num_groups=min(sizes.vae_channels[0], 32), scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    normal = decoder()
    return {
        "semantic_embedder": LLaDA2UniSemanticEmbedder(vocab_size=sizes.codebook_size, embedding_dim=sizes.cap_dim),
        "transformer": normal, "transformer_turbo": decoder(), "vae": vae,
        "scheduler": default_scheduler("normal"), "scheduler_turbo": default_scheduler("turbo"),
    }


def extend_vocabulary(model, processor, words) -> int:
    """Add `words` to the tokenizer as whole-word tokens (lower-cased input matches them) and grow the model's
    vocabulary below the image codes, which keep their rows (`resize_token_embeddings`); the processor follows the
    new code offset. Returns the number of words added (0 when all are known)."""
    tokenizer = processor.tokenizer
    known = tokenizer.get_vocab()
    new = [w.lower() for w in words if w.lower() not in known]
    if not new:
        return 0
    offset = model.config.image_token_offset
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in new])
    model.resize_token_embeddings(len(tokenizer) + model.config.codebook_size)
    processor.image_token_offset = model.config.image_token_offset
    # The shipped model's new words started at the mean of the text rows; `resize_token_embeddings` takes the mean of
    # every row (codes included), so the recipe sets them itself.
    with torch.no_grad():
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            rows = module.weight
            rows[offset : offset + len(new)] = rows[:offset].float().mean(0).to(rows.dtype)
    return len(new)


def save_pipeline(folder, processor, model, pixel_parts: dict) -> Path:
    """Write everything as one converted folder (model + processor at the root, pixel parts in subfolders)."""
    from diffusers_llada_uni import LLaDA2UniPipeline

    pipe = LLaDA2UniPipeline(processor=processor, mllm=model, **pixel_parts)
    pipe.save_pretrained(folder)
    return Path(folder)


def save_untrained(folder, sizes: ShapesModelSizes = None, seed: int = 0) -> Path:
    """The whole untrained model over the shapes vocabulary, saved as one converted folder (tests, smoke runs)."""
    from examples.shapes.world import VOCABULARY

    sizes = sizes or ShapesModelSizes()
    tokenizer = build_tokenizer(VOCABULARY)
    return save_pipeline(folder, build_processor(tokenizer, sizes), build_model(tokenizer, sizes, seed),
                         build_pixel_side(sizes, seed))


__all__ = ["ShapesModelSizes", "build_model", "extend_vocabulary", "build_pixel_side", "build_processor", "build_tokenizer",
           "save_pipeline", "save_untrained"]
