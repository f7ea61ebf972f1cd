"""Configurations for the LLaDA2 MoE masked-diffusion backbone (and, later, the LLaDA2.0-Uni composite)."""

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.glm_image.configuration_glm_image import GlmImageVisionConfig, GlmImageVQVAEConfig


# Ids the original code hard-codes (LLaDA2 / Ling tokenizer).
_REAL_IDS = {"bos_token_id": 156891, "eos_token_id": 156892, "pad_token_id": 156892, "mask_token_id": 156895}


_AUTO_MAP = {
    "AutoConfig": "configuration_llada2_uni.LLaDA2MoeConfig",
    "AutoModel": "modeling_llada2_moe.LLaDA2MoeForCausalLM",
    "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeForCausalLM",
}


class LLaDA2MoeConfig(PretrainedConfig):
    r"""
    Configuration of the LLaDA2 MoE backbone (LLaDA2.0-mini / -flash / the LLM inside LLaDA2.0-Uni).

    The original `config.json` of any of these releases loads unchanged: every key it carries is accepted
    under its original name, unknown keys are kept as attributes, and the v5-style `rope_parameters` dict
    is honoured next to the legacy `rope_theta` / `partial_rotary_factor` keys. The ids the original code
    hard-codes (mask, eos, pad, ...) become config fields with the real model's ids as defaults.

    Args:
        vocab_size (`int`, defaults to 157184): text vocabulary (+ image codes for Uni: 173568).
        hidden_size (`int`, defaults to 2048)
        intermediate_size (`int`, defaults to 5120): width of the dense SwiGLU layers.
        moe_intermediate_size (`int`, defaults to 512): width of each routed and shared expert.
        num_hidden_layers (`int`, defaults to 20)
        num_attention_heads (`int`, defaults to 16)
        num_key_value_heads (`int`, defaults to 4)
        head_dim (`int`, *optional*): defaults to `hidden_size // num_attention_heads`.
        first_k_dense_replace (`int`, defaults to 1): the first layers use a dense MLP instead of MoE.
        num_experts (`int`, defaults to 256), num_experts_per_tok (`int`, defaults to 8),
        num_shared_experts (`int`, defaults to 1), n_group (`int`, defaults to 8), topk_group (`int`, defaults to 4),
        routed_scaling_factor (`float`, defaults to 2.5): group-limited sigmoid routing, DeepSeek-V3 style.
        rope_theta (`float`, defaults to 600000.0), partial_rotary_factor (`float`, defaults to 0.5): legacy keys, folded
            into `rope_parameters`; afterwards `config.rope_theta` / `config.partial_rotary_factor` read and write it.
        rope_parameters (`dict`, *optional*): v5-style RoPE dict (`rope_type`, `rope_theta`, `partial_rotary_factor`,
            and the scaling keys of the type); wins over the legacy keys when given. It is the one source the model
            reads when it is built: "default" (the releases) or any type of transformers' `ROPE_INIT_FUNCTIONS`
            ("linear", "dynamic", "yarn", "longrope", "llama3", ...).
        max_position_embeddings (`int`, defaults to 8192)
        rms_norm_eps (`float`, defaults to 1e-6)
        use_qk_norm (`bool`, defaults to True), use_qkv_bias (`bool`, defaults to False), use_bias (`bool`, defaults to False)
        mask_token_id (`int`, defaults to 156895): the diffusion `<|mask|>` id.
        eos_token_id / pad_token_id (`int`, defaults to 156892), bos_token_id (`int`, defaults to 156891).
            An id left unset falls back to the released model's id when that fits `vocab_size`, else to `None`
            (eos falls back to `pad_token_id` first: the releases use one token for both).
        image_token_offset (`int`, *optional*): first image-code id in the vocabulary (Uni only).
        block_length (`int`, defaults to 32): block size of block-diffusion decoding and training.
        experts_fp8 (`dict`, *optional*): routed experts stored in FP8 (weight-only; computed in the activations'
            dtype): `{"dtype": "float8_e4m3fn" | "float8_e5m2", "gate_up_block_size": [rows, cols],
            "down_block_size": [rows, cols]}`. Each block of a weight shares one float32 scale (`*_scale_inv`,
            multiplied in to dequantize). Written by the converter for FP8 releases; None = ordinary weights.
        diffusion_training (`dict`, *optional*): settings of the training objective `forward(labels=...)` computes
            (`training_llada2_uni.DiffusionTrainingArguments`): `objective` "block" ([x_t ; x_0], default) or
            "full" (MDLM), `block_length` (default: `block_length`), `mask_ratio_min` / `mask_ratio_max` (0.001 / 1),
            `loss_weighting` "inverse_t" (default) or "none", `complementary_masking` (False).
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size=157184,
        hidden_size=2048,
        intermediate_size=5120,
        moe_intermediate_size=512,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=None,
        first_k_dense_replace=1,
        num_experts=256,
        num_experts_per_tok=8,
        num_shared_experts=1,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        score_function="sigmoid",
        router_dtype="fp32",
        norm_topk_prob=True,
        moe_router_enable_expert_bias=True,
        hidden_act="silu",
        use_qkv_bias=False,
        use_bias=False,
        use_qk_norm=True,
        rms_norm_eps=1e-6,
        rope_theta=600000.0,
        partial_rotary_factor=0.5,
        rope_scaling=None,
        rope_parameters=None,
        max_position_embeddings=8192,
        attention_dropout=0.0,
        embedding_dropout=0.0,
        output_dropout=0.0,
        initializer_range=0.02,
        output_router_logits=False,
        use_cache=False,
        tie_word_embeddings=False,
        mask_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        image_token_offset=None,
        block_length=32,
        experts_fp8=None,
        diffusion_training=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // max(num_attention_heads, 1)
        self.first_k_dense_replace = first_k_dense_replace
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.num_shared_experts = num_shared_experts
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.score_function = score_function
        self.router_dtype = router_dtype
        self.norm_topk_prob = norm_topk_prob
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.use_qk_norm = use_qk_norm
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.attention_dropout = attention_dropout
        self.embedding_dropout = embedding_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.output_router_logits = output_router_logits
        self.use_cache = use_cache
        # The released models hard-code these ids; a config that names none gets them when they fit its vocabulary
        # (a tiny test vocabulary does not hold them, and then the ids must come from the tokenizer).
        def real_id(value, default):
            if value is not None:
                return value
            return default if default < vocab_size else None

        pad_token_id = real_id(pad_token_id, _REAL_IDS["pad_token_id"])
        eos_token_id = real_id(eos_token_id, pad_token_id if pad_token_id is not None else _REAL_IDS["eos_token_id"])
        bos_token_id = real_id(bos_token_id, _REAL_IDS["bos_token_id"])
        self.mask_token_id = real_id(mask_token_id, _REAL_IDS["mask_token_id"])
        self.image_token_offset = image_token_offset
        self.block_length = block_length
        self.experts_fp8 = experts_fp8
        self.diffusion_training = diffusion_training
        # The base class turns legacy RoPE kwargs into its own structure; we keep ours, so they are not forwarded.
        kwargs.pop("rope_type", None)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._set_rope(rope_theta, partial_rotary_factor, rope_scaling, rope_parameters)
        # Attention is bidirectional inside a block; masks are always explicit (never causal by default).
        self.is_causal = False
        # Where this project's remote code lives in a saved folder (an original config points at files it never ships).
        self.auto_map = dict(_AUTO_MAP)
        self.validate_shapes()

    def _set_rope(self, rope_theta, partial_rotary_factor, rope_scaling, rope_parameters):
        params = dict(rope_parameters or rope_scaling or {})
        params.setdefault("rope_type", params.pop("type", "default"))
        params.setdefault("rope_theta", rope_theta)
        params.setdefault("partial_rotary_factor", partial_rotary_factor if partial_rotary_factor is not None else 1.0)
        self.rope_parameters = params

    # `rope_parameters` is the only copy: these views keep the legacy names working in both directions, so an edit
    # made through either name is what the model reads.
    @property
    def rope_theta(self) -> float:
        value = self.rope_parameters.get("rope_theta")
        return float(value) if isinstance(value, (int, float)) else value

    @rope_theta.setter
    def rope_theta(self, value):
        self.rope_parameters["rope_theta"] = value

    @property
    def partial_rotary_factor(self) -> float:
        return float(self.rope_parameters.get("partial_rotary_factor", 1.0))

    @partial_rotary_factor.setter
    def partial_rotary_factor(self, value):
        self.rope_parameters["partial_rotary_factor"] = value

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # The released config.json carries the legacy keys next to `rope_parameters`; they are written as its mirror.
        if isinstance(output.get("rope_parameters"), dict):
            output["rope_theta"] = output["rope_parameters"].get("rope_theta")
            output["partial_rotary_factor"] = output["rope_parameters"].get("partial_rotary_factor", 1.0)
        return output

    def check_rope_parameters(self):
        """Raise `ValueError` unless `rope_parameters` describes a RoPE this model computes. Run when the config is
        built and again when a model is built from it (the dict is mutable in between)."""
        params = self.rope_parameters
        if not isinstance(params, dict):
            raise ValueError(f"`rope_parameters` must be a dict, got {type(params).__name__}.")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"`rope_parameters['rope_type']`={rope_type!r} is not supported; accepted: 'default', "
                             f"{sorted(ROPE_INIT_FUNCTIONS)} (transformers' RoPE functions).")
        params["rope_type"] = rope_type
        # transformers' own completion of the dict (e.g. yarn's `original_max_position_embeddings`), as its models do
        self.standardize_rope_params()
        params = self.rope_parameters
        if not isinstance(params.get("rope_theta"), (int, float)) or params["rope_theta"] <= 0:
            raise ValueError(f"`rope_parameters['rope_theta']` must be a positive number, got {params.get('rope_theta')!r}.")
        if not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_dim % 2:
            raise ValueError(
                f"`partial_rotary_factor` ({self.partial_rotary_factor}) must be in (0, 1] and give an even number "
                f"of rotary dims (head_dim {self.head_dim} -> {self.rotary_dim})."
            )
        try:  # transformers' own check of the keys each type needs (e.g. `factor`)
            self.validate_rope()
        except KeyError as error:
            raise ValueError(f"`rope_parameters` {params}: {error.args[0]}") from None

    def _validate_experts_fp8(self):
        fp8 = self.experts_fp8
        if fp8 is None:
            return
        if not isinstance(fp8, dict) or fp8.get("dtype") not in ("float8_e4m3fn", "float8_e5m2"):
            raise ValueError(f"`experts_fp8` must be None or a dict with `dtype` 'float8_e4m3fn' or 'float8_e5m2' and "
                             f"`gate_up_block_size` / `down_block_size`; got {fp8!r}.")
        hidden, inter = self.hidden_size, self.moe_intermediate_size
        for name, (rows, cols) in (("gate_up_block_size", (2 * inter, hidden)), ("down_block_size", (hidden, inter))):
            block = fp8.get(name)
            if (
                not isinstance(block, (list, tuple)) or len(block) != 2
                or not all(isinstance(b, int) and b > 0 for b in block)
                or rows % block[0] or cols % block[1]
            ):
                raise ValueError(f"`experts_fp8[{name!r}]` must be two positive ints dividing the weight's shape "
                                 f"({rows}, {cols}); got {block!r}.")

    def validate_shapes(self):
        """Raise `ValueError` naming the offending key when the shapes cannot form a model."""

        def positive(name):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings", "block_length"):
            positive(name)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of "
                f"`num_key_value_heads` ({self.num_key_value_heads})."
            )
        self.check_rope_parameters()
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(
                f"`first_k_dense_replace` must be in [0, num_hidden_layers={self.num_hidden_layers}], "
                f"got {self.first_k_dense_replace}."
            )
        has_moe = self.first_k_dense_replace < self.num_hidden_layers
        if self.first_k_dense_replace > 0:
            positive("intermediate_size")
        if has_moe:
            for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group"):
                positive(name)
            if self.num_experts % self.n_group:
                raise ValueError(
                    f"`n_group` ({self.n_group}) must divide `num_experts` ({self.num_experts})."
                )
            if self.topk_group > self.n_group:
                raise ValueError(f"`topk_group` ({self.topk_group}) must be <= `n_group` ({self.n_group}).")
            per_group = self.num_experts // self.n_group
            if per_group < 2:
                raise ValueError(
                    f"each routing group needs at least 2 experts (group score = sum of its top-2); got "
                    f"num_experts={self.num_experts} / n_group={self.n_group}."
                )
            if self.num_experts_per_tok > self.topk_group * per_group:
                raise ValueError(
                    f"`num_experts_per_tok` ({self.num_experts_per_tok}) must be <= the experts in the kept groups "
                    f"(topk_group {self.topk_group} x {per_group} experts per group)."
                )
            if self.score_function != "sigmoid":
                raise ValueError(f"`score_function` must be 'sigmoid' (LLaDA2 routing), got {self.score_function!r}.")
            self._validate_experts_fp8()
        if self.hidden_act != "silu":
            raise ValueError(f"`hidden_act` must be 'silu' (SwiGLU experts), got {self.hidden_act!r}.")
        if self.use_bias:
            raise ValueError("`use_bias=True` (a bias on the attention output projection) is not used by any LLaDA2 "
                             "release and is not supported.")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ValueError(f"`{name}` ({value!r}) must be an id in [0, vocab_size={self.vocab_size}).")
        if self.image_token_offset is not None and not 0 < self.image_token_offset <= self.vocab_size:
            raise ValueError(
                f"`image_token_offset` ({self.image_token_offset}) must be in (0, vocab_size={self.vocab_size}]."
            )




# Real ids of the LLaDA2.0-Uni tokenizer where the reference knows them; the others come from the tokenizer.
_REAL_UNI_IDS = {"image_start_token_id": 156901, "image_end_token_id": 156902, "boi_token_id": 156904}
_UNI_TEXT_DEFAULTS = {"vocab_size": 173568, "image_token_offset": 157184}
_UNI_AUTO_MAP = {
    "AutoConfig": "configuration_llada2_uni.LLaDA2UniConfig",
    "AutoModel": "modeling_llada2_uni.LLaDA2UniForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_llada2_uni.LLaDA2UniForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_llada2_uni.LLaDA2UniForConditionalGeneration",
}


class LLaDA2UniConfig(PretrainedConfig):
    r"""
    LLaDA2.0-Uni: the LLaDA2 MoE backbone (`text_config`) + the SigLIP-VQ image tokenizer (`vision_config`,
    `vq_config`, GLM-Image lineage). VQ code k enters the LLM vocabulary as `image_token_offset + k`. Built without
    arguments it describes the released model.

    Args:
        text_config (`dict` or `LLaDA2MoeConfig`): the backbone (default: the release's, vocabulary 173568 with the
            image codes from 157184).
        vision_config (`dict` or `GlmImageVisionConfig`): the ViT encoder (patch 16, learned position table).
        vq_config (`dict` or `GlmImageVQVAEConfig`): the cosine-nearest codebook (`num_embeddings` codes).
        image_token_offset (`int`): first image id; defaults to `text_config.image_token_offset`, else
            `text_config.vocab_size - num_embeddings`.
        image_start_token_id (`<|image|>`), image_end_token_id (`<|/image|>`), boi_token_id (`<boi>`),
        uncondition_token_id (`<uncondition>`), reserved_token_start_id (`<|reserved_token_0|>`; grid sides N are
            written as `<|reserved_token_N|>`), num_reserved_tokens (`int`, defaults to 48): special ids.
        structural_token_ids (`list[int]`, *optional*): further ids that give a prompt its structure, such as chat
            role markers where the tokenizer has them as single special tokens. SPRINT never prunes these, nor the
            special ids above (see `SprintConfig.protect_structure`). Defaults to none.
    """

    model_type = "llada2_uni"
    # Declared so that settings such as attn_implementation reach the backbone and the vision tower.
    sub_configs = {"text_config": LLaDA2MoeConfig, "vision_config": GlmImageVisionConfig, "vq_config": GlmImageVQVAEConfig}

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        vq_config=None,
        image_token_offset=None,
        image_start_token_id=None,
        image_end_token_id=None,
        boi_token_id=None,
        uncondition_token_id=None,
        reserved_token_start_id=None,
        num_reserved_tokens=48,
        structural_token_ids=None,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = LLaDA2MoeConfig(**text_config)
        # Without one, the released model's backbone: 157184 text ids followed by the 16384 image codes.
        self.text_config = text_config if text_config is not None else LLaDA2MoeConfig(**_UNI_TEXT_DEFAULTS)
        if isinstance(vision_config, dict):
            vision_config = GlmImageVisionConfig(**vision_config)
        self.vision_config = vision_config if vision_config is not None else GlmImageVisionConfig()
        if isinstance(vq_config, dict):
            vq_config = GlmImageVQVAEConfig(**vq_config)
        self.vq_config = vq_config if vq_config is not None else GlmImageVQVAEConfig()

        text = self.text_config
        if image_token_offset is None:
            image_token_offset = text.image_token_offset
        if image_token_offset is None:
            image_token_offset = text.vocab_size - self.vq_config.num_embeddings
        self.image_token_offset = image_token_offset
        text.image_token_offset = image_token_offset
        vocab = text.vocab_size

        def real_id(value, name):
            if value is not None:
                return value
            default = _REAL_UNI_IDS.get(name)
            return default if default is not None and default < vocab else None

        self.image_start_token_id = real_id(image_start_token_id, "image_start_token_id")
        self.image_end_token_id = real_id(image_end_token_id, "image_end_token_id")
        self.boi_token_id = real_id(boi_token_id, "boi_token_id")
        self.uncondition_token_id = uncondition_token_id
        self.reserved_token_start_id = reserved_token_start_id
        self.num_reserved_tokens = num_reserved_tokens
        self.structural_token_ids = list(structural_token_ids or [])
        kwargs.pop("auto_map", None)
        super().__init__(**kwargs)
        self.auto_map = dict(_UNI_AUTO_MAP)
        self.validate_uni()

    @property
    def codebook_size(self) -> int:
        return self.vq_config.num_embeddings

    def validate_uni(self):
        text, codebook = self.text_config, self.codebook_size
        if not 0 < self.image_token_offset or self.image_token_offset + codebook > text.vocab_size:
            raise ValueError(
                f"`image_token_offset` ({self.image_token_offset}) + codebook size ({codebook}) must fit the text "
                f"vocabulary of {text.vocab_size} ids."
            )
        if self.vq_config.latent_channels != self.vision_config.hidden_size:
            raise ValueError(
                f"`vq_config.latent_channels` ({self.vq_config.latent_channels}) must equal `vision_config.hidden_size` "
                f"({self.vision_config.hidden_size})."
            )
        if getattr(self.vision_config, "spatial_merge_size", 1) != 1:
            raise ValueError("`vision_config.spatial_merge_size` must be 1 (row-major VQ token order).")
        for name in ("image_start_token_id", "image_end_token_id", "boi_token_id", "uncondition_token_id",
                     "reserved_token_start_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.image_token_offset:
                raise ValueError(f"`{name}` ({value}) must be a text id below image_token_offset={self.image_token_offset}.")
        bad = [value for value in self.structural_token_ids
               if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.image_token_offset]
        if bad:
            raise ValueError(f"`structural_token_ids` must be text ids below image_token_offset="
                             f"{self.image_token_offset}; got {bad}.")


__all__ = ["LLaDA2MoeConfig", "LLaDA2UniConfig"]
