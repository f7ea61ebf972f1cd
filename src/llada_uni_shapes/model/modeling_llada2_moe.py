"""The LLaDA2 MoE masked-diffusion backbone.

Pre-norm decoder layers with fused-QKV GQA attention (per-head q/k RMSNorm, partial rotate-half RoPE), a dense SwiGLU
MLP in the first `first_k_dense_replace` layers and a sigmoid-routed, group-limited Mixture-of-Experts after that.
Attention is never causal: callers pass the block-causal (or any other) mask explicitly. This file holds no sampling
logic; block-diffusion generation lives in `generation_llada2_uni.py`.
"""

from collections.abc import Callable
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_llada2_uni import LLaDA2MoeConfig
from .generation_config_llada2_uni import defaults_for_model
from .generation_llada2_uni import LLaDA2MoeGenerationMixin
from .training_llada2_uni import DIFFUSION_OBJECTIVES, DiffusionTrainingArguments, masked_diffusion_forward


def _cache_field(output_class) -> str:
    """The name under which an output class keeps the cache: `cache` in newer transformers 5 releases (which warn on the
    old name), `past_key_values` before the rename."""
    return "cache" if "cache" in getattr(output_class, "__dataclass_fields__", {}) else "past_key_values"


def _one_cache(past_key_values, cache):
    """`past_key_values` and `cache` name the same argument (the latter is the newer transformers spelling)."""
    if past_key_values is not None and cache is not None:
        raise ValueError("Pass the cache as `past_key_values` or as `cache`, not both.")
    return past_key_values if past_key_values is not None else cache


class LLaDA2MoeRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class LLaDA2MoeRotaryEmbedding(nn.Module):
    """Rotate-half RoPE over the first `rotary_dim` dims of each head; the rest of the head passes through.

    The frequencies follow `config.rope_parameters` as it is when the module is built: the "default" type (the
    released models) is computed here, every other type (linear, dynamic, yarn, longrope, llama3, ...) by transformers'
    own `ROPE_INIT_FUNCTIONS`, with `dynamic_rope_update` for the types that change with the sequence length.
    """

    def __init__(self, config: LLaDA2MoeConfig, device=None):
        super().__init__()
        config.check_rope_parameters()  # also here: the dict may have been edited since the config was built
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        inv_freq, self.attention_scaling = self.compute_inv_freq(device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def compute_inv_freq(self, device=None) -> tuple[torch.Tensor, float]:
        """(inverse frequencies [rotary_dim / 2], scale of cos and sin) from the config's RoPE settings."""
        if self.rope_type == "default":
            return self.compute_default_rope_parameters(self.config, device)
        return ROPE_INIT_FUNCTIONS[self.rope_type](self.config, device)

    @staticmethod
    def compute_default_rope_parameters(config: LLaDA2MoeConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        rotary_dim, theta = config.rotary_dim, config.rope_parameters["rope_theta"]
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
        return 1.0 / (theta ** (exponents / rotary_dim)), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        positions = position_ids[:, None, :].float()
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = (inv_freq @ positions).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_partial(states, cos, sin):
    """`states`: [B, heads, L, head_dim]; `cos`, `sin`: [B, L, rotary_dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot = cos.shape[-1]
    rotated, passed = states[..., :rot], states[..., rot:]
    return torch.cat((rotated * cos + rotate_half(rotated) * sin, passed), dim=-1)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return hidden_states
    batch, kv_heads, length, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None].expand(batch, kv_heads, n_rep, length, head_dim)
    return hidden_states.reshape(batch, kv_heads * n_rep, length, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention; `attention_mask` here is always additive (bool masks are converted by the model)."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LLaDA2MoeAttention(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        self.query_key_value = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, bias=config.use_qkv_bias
        )
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)
        if config.use_qk_norm:
            self.query_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.key_layernorm = LLaDA2MoeRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def project_queries(self, hidden_states, position_embeddings):
        """The rotated query states [B, heads, L, head_dim] that `forward` attends with, for `hidden_states` [B, L,
        hidden] and their `position_embeddings` (cos, sin); lets callers such as SPRINT's attention probe score a
        block's attention without knowing how the projection is laid out."""
        return self._rotate_queries(self._split_qkv(hidden_states)[0], position_embeddings)

    def _split_qkv(self, hidden_states):
        batch, length, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(batch, length, -1, self.head_dim)
        # The fused projection holds contiguous q | k | v head blocks (not interleaved per KV group).
        return qkv.split([self.num_heads, self.num_key_value_heads, self.num_key_value_heads], dim=2)

    def _rotate_queries(self, query, position_embeddings):
        if self.config.use_qk_norm:
            query = self.query_layernorm(query)
        return rotate_partial(query.transpose(1, 2), *position_embeddings)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, **kwargs):
        batch, length, _ = hidden_states.shape
        # One fused projection serves all three; `project_queries` would compute it again.
        query, key, value = self._split_qkv(hidden_states)
        query = self._rotate_queries(query, position_embeddings)
        if self.config.use_qk_norm:
            key = self.key_layernorm(key)
        key, value = rotate_partial(key.transpose(1, 2), *position_embeddings), value.transpose(1, 2)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        attention_interface: Callable = eager_attention_forward
        if self.config._attn_implementation != "eager":
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch, length, -1).contiguous()
        return self.dense(attn_output), attn_weights


class LLaDA2MoeMLP(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2MoeGate(nn.Module):
    """Sigmoid router with group-limited top-k; `expert_bias` steers the selection but never the combine weights."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts, dtype=torch.float32))

    def forward(self, hidden_states: torch.Tensor):
        """`hidden_states` [N, H] -> (top-k ids [N, k], combine weights [N, k] fp32, router logits [N, E] fp32)."""
        logits = F.linear(hidden_states.float(), self.weight.float())
        scores = logits.sigmoid()
        biased = scores + self.expert_bias.float()
        tokens = biased.shape[0]
        group_scores = biased.view(tokens, self.n_group, -1).topk(2, dim=-1).values.sum(dim=-1)
        group_idx = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        expert_mask = group_mask.unsqueeze(-1).expand(tokens, self.n_group, self.num_experts // self.n_group)
        biased = biased.masked_fill(~expert_mask.reshape(tokens, -1), float("-inf"))
        topk_idx = biased.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, topk_idx)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * self.routed_scaling_factor
        return topk_idx, weights, logits


_GROUPED_MM_BACKWARD: dict = {}


def _grouped_matmul(rows: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """`rows @ weight[e].T` per expert group. Under autograd the incoming gradient is made contiguous first: the
    grouped GEMM backward rejects broadcast gradients (strides 0), such as those of a plain `.sum()`."""
    out = F.grouped_mm(rows, weight.transpose(1, 2), offs=offsets)
    if out.requires_grad:
        out.register_hook(torch.Tensor.contiguous)
    return out


def _grouped_mm_has_backward(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch build differentiates `F.grouped_mm` on this device and dtype (probed once on a 2-expert toy).

    The first call usually comes from inside a forward, possibly a gradient-checkpointed one. Non-reentrant
    checkpointing counts, through saved-tensor hooks, the tensors the original forward saves, and the recomputation
    must save as many; the probe runs once per process, so its tensors must stay out of that count. Identity hooks
    pushed on top are the ones autograd uses for the probe, whatever hooks the caller has active."""
    key = (device_type, dtype)
    if key not in _GROUPED_MM_BACKWARD:
        try:
            with torch.autograd.graph.saved_tensors_hooks(_unchanged, _unchanged):
                _GROUPED_MM_BACKWARD[key] = _probe_grouped_mm_backward(device_type, dtype)
        except RuntimeError:  # saved-tensor hooks are disabled here (torch.func transforms), so none can count it
            _GROUPED_MM_BACKWARD[key] = _probe_grouped_mm_backward(device_type, dtype)
    return _GROUPED_MM_BACKWARD[key]


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _probe_grouped_mm_backward(device_type: str, dtype: torch.dtype) -> bool:
    try:
        # grad on even where the caller runs without it (reentrant checkpointing's first forward, say)
        with torch.enable_grad():
            rows = torch.ones(16, 16, device=device_type, dtype=dtype, requires_grad=True)
            weight = torch.ones(2, 16, 16, device=device_type, dtype=dtype, requires_grad=True)
            offsets = torch.tensor([8, 16], device=device_type, dtype=torch.int32)
            _grouped_matmul(rows, weight, offsets).sum().backward()
        return rows.grad is not None and weight.grad is not None
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _grouped_mm_fits(rows: torch.Tensor, *weights: torch.Tensor) -> bool:
    # torch's grouped GEMM wants 16-byte aligned strides, and under autograd a backward for this device and dtype.
    if not hasattr(F, "grouped_mm") or rows.device.type not in ("cpu", "cuda"):
        return False
    size = rows.element_size()
    if not all((w.shape[-1] * size) % 16 == 0 and (w.shape[-2] * size) % 16 == 0 for w in weights):
        return False
    needs_grad = torch.is_grad_enabled() and (rows.requires_grad or any(w.requires_grad for w in weights))
    return not needs_grad or _grouped_mm_has_backward(rows.device.type, rows.dtype)


class LLaDA2MoeExperts(nn.Module):
    """All routed experts as two fused 3-D parameters, computed with grouped matmuls over expert-sorted tokens.

    `gate_up_proj` [E, 2*I, H] holds each expert's gate rows then its up rows; `down_proj` is [E, H, I]. The per-expert
    layout of the original checkpoints is stacked into these by `conversion/`. With `config.experts_fp8` the two
    weights are FP8 with float32 block scales (`*_scale_inv`), frozen, and only the experts a forward hits are
    dequantized (into the activations' dtype) for it.
    """

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.intermediate_size = config.moe_intermediate_size
        shapes = {"gate_up_proj": (config.num_experts, 2 * config.moe_intermediate_size, config.hidden_size),
                  "down_proj": (config.num_experts, config.hidden_size, config.moe_intermediate_size)}
        self.fp8 = config.experts_fp8
        if self.fp8 is None:
            for name, shape in shapes.items():
                setattr(self, name, nn.Parameter(torch.empty(shape)))
        else:
            dtype = getattr(torch, self.fp8["dtype"])
            for name, (experts, rows, cols) in shapes.items():
                block_rows, block_cols = self.fp8[name.replace("_proj", "_block_size")]
                setattr(self, name, nn.Parameter(torch.empty(experts, rows, cols, dtype=dtype), requires_grad=False))
                scale = torch.empty(experts, rows // block_rows, cols // block_cols, dtype=torch.float32)
                setattr(self, f"{name}_scale_inv", nn.Parameter(scale, requires_grad=False))
        self.backend = "auto"  # "auto" | "grouped_mm" | "loop"

    def dequantized(self, name: str, experts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The FP8 weight `name` of the `experts` (indices) as `dtype`: FP8 value x its block's scale, in float32."""
        weight = getattr(self, name)[experts].to(torch.float32)
        scale = getattr(self, f"{name}_scale_inv")[experts]
        block_rows, block_cols = weight.shape[1] // scale.shape[1], weight.shape[2] // scale.shape[2]
        scale = scale.repeat_interleave(block_rows, dim=1).repeat_interleave(block_cols, dim=2)
        return (weight * scale).to(dtype)

    def _expert_mlp(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        gate_up_proj, down_proj = self.gate_up_proj, self.down_proj
        if self.fp8 is not None:
            hit = counts.nonzero().squeeze(1)
            gate_up_proj = self.dequantized("gate_up_proj", hit, rows.dtype)
            down_proj = self.dequantized("down_proj", hit, rows.dtype)
            counts = counts[hit]
        use_grouped = self.backend == "grouped_mm" or (
            self.backend == "auto" and _grouped_mm_fits(rows, gate_up_proj, down_proj)
        )
        if use_grouped:
            offsets = counts.cumsum(0).to(torch.int32)
            gate, up = _grouped_matmul(rows, gate_up_proj, offsets).chunk(2, dim=-1)
            return _grouped_matmul(F.silu(gate) * up, down_proj, offsets)
        outputs, start = [], 0
        # unbind once: indexing expert by expert would give each one a backward that writes a zero tensor the size of
        # all experts (quadratic in the number of experts hit)
        gate_up_each, down_each = gate_up_proj.unbind(0), down_proj.unbind(0)
        for expert, count in enumerate(counts.tolist()):  # one host sync per layer, experts without tokens skipped
            if count == 0:
                continue
            gate, up = F.linear(rows[start : start + count], gate_up_each[expert]).chunk(2, dim=-1)
            outputs.append(F.linear(F.silu(gate) * up, down_each[expert]))
            start += count
        return torch.cat(outputs) if outputs else rows.new_zeros(0, rows.shape[-1])

    def forward(self, hidden_states: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        tokens, top_k = topk_idx.shape
        flat = topk_idx.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts)
        expert_out = self._expert_mlp(hidden_states[order // top_k], counts)
        # Weighted sum over the k choices in fp32, in top-k order, as the original combine does.
        combined = torch.empty(flat.shape[0], hidden_states.shape[-1], device=hidden_states.device, dtype=torch.float32)
        combined[order] = expert_out.float()
        combined = (combined.view(tokens, top_k, -1) * topk_weights.unsqueeze(-1).float()).sum(dim=1)
        return combined.to(hidden_states.dtype)


class LLaDA2MoeSparseMoeBlock(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.gate = LLaDA2MoeGate(config)
        self.experts = LLaDA2MoeExperts(config)
        self.shared_experts = (
            LLaDA2MoeMLP(config, config.moe_intermediate_size * config.num_shared_experts)
            if config.num_shared_experts
            else None
        )

    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        topk_idx, topk_weights, router_logits = self.gate(flat)
        out = self.experts(flat, topk_idx, topk_weights).view(shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(hidden_states)
        return out, router_logits


class LLaDA2MoeDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int):
        super().__init__()
        self.attention = LLaDA2MoeAttention(config, layer_idx)
        self.is_moe = layer_idx >= config.first_k_dense_replace
        self.mlp = LLaDA2MoeSparseMoeBlock(config) if self.is_moe else LLaDA2MoeMLP(config, config.intermediate_size)
        self.input_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None, **kwargs):
        residual = hidden_states
        hidden_states, _ = self.attention(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        if self.is_moe:
            hidden_states, _ = self.mlp(hidden_states)  # the router logits are recorded from the block's output
        else:
            hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config_class = LLaDA2MoeConfig
    config: LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2MoeDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _keep_in_fp32_modules_strict = ["expert_bias"]  # the FP8 scales join them where they exist (LLaDA2MoeModel)
    # Some releases store no router bias; zeros (the init) are then exact.
    _keys_to_ignore_on_load_missing = [r"mlp\.gate\.expert_bias"]
    _supports_sdpa = True
    _supports_flash_attn = False  # block-diffusion masks are arbitrary 4-D masks
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.get_text_config().initializer_range
        if isinstance(module, nn.Linear):
            _init("normal_", module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init("zeros_", module.bias)
        elif isinstance(module, nn.Embedding):
            _init("normal_", module.weight, mean=0.0, std=std)
        elif isinstance(module, LLaDA2MoeRMSNorm):
            _init("ones_", module.weight)
        elif isinstance(module, LLaDA2MoeGate):
            _init("normal_", module.weight, mean=0.0, std=std)
            _init("zeros_", module.expert_bias)
        elif isinstance(module, LLaDA2MoeRotaryEmbedding):
            # Non-persistent buffers: models built on the meta device by from_pretrained must recompute them here.
            inv_freq, _ = module.compute_inv_freq(module.inv_freq.device)
            _init("copy_", module.inv_freq, other=inv_freq)
            _init("copy_", module.original_inv_freq, other=inv_freq)
        elif isinstance(module, LLaDA2MoeExperts) and module.fp8 is None:
            _init("normal_", module.gate_up_proj, mean=0.0, std=std)
            _init("normal_", module.down_proj, mean=0.0, std=std)
        elif isinstance(module, LLaDA2MoeExperts):
            # normal_ has no FP8 kernel: draw in float32, store FP8 values with unit scales.
            for name in ("gate_up_proj", "down_proj"):
                weight = getattr(module, name)
                if not getattr(weight, "_is_hf_initialized", False):
                    weight.copy_((torch.randn(weight.shape, device=weight.device) * std).to(weight.dtype))
                _init("ones_", getattr(module, f"{name}_scale_inv"))

    def set_experts_backend(self, backend: str):
        """Choose how routed experts run: "auto" (grouped GEMM when it applies), "grouped_mm" or "loop"."""
        if backend not in ("auto", "grouped_mm", "loop"):
            raise ValueError(f"`backend` must be one of 'auto', 'grouped_mm', 'loop'; got {backend!r}.")
        for module in self.modules():
            if isinstance(module, LLaDA2MoeExperts):
                module.backend = backend

    # ------------------------------------------------------------------ strict loading
    # transformers loads a checkpoint whose config and weights disagree (layers added or dropped, shapes changed) with
    # random or discarded weights and only a printed report; a converted folder is meant to load exactly, so anything
    # short of that is an error naming the file and the key, and so are unreadable files and non-finite weights.

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, strict: raises `OSError` for a truncated or corrupt safetensors file and
        `ValueError` for an impossible config value, a weight the model lacks or the checkpoint lacks, a shape
        mismatch (unless `ignore_mismatched_sizes=True`) or a NaN / inf weight, naming the file and the key.
        Weights left on the meta device (disk offload) are not read for the finite check."""
        import os

        return_info = kwargs.pop("output_loading_info", False)
        tolerate_mismatch = bool(kwargs.get("ignore_mismatched_sizes", False))
        source = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        folder = None
        if source is not None:
            folder = os.path.join(source, kwargs.get("subfolder") or "")
            folder = folder if os.path.isdir(folder) else None
        files = cls._strict_weight_files(folder, kwargs.get("variant")) if folder else {}
        config = kwargs.get("config")
        if hasattr(config, "get_text_config"):
            cls._strict_check_config(config, source)
        # Mismatched shapes come back in the loading info (and are raised below with their keys) instead of
        # transformers' error that points at a printed report.
        kwargs["ignore_mismatched_sizes"] = True
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args,
                                                  output_loading_info=True, **kwargs)
        except Exception as error:
            if type(error).__name__ == "SafetensorError":
                raise OSError(f"{source}: a safetensors file cannot be read ({error}); the download or conversion "
                              "was cut short or the file is corrupt: fetch or convert it again.") from error
            raise
        cls._strict_check_config(model.config, source)
        cls._strict_check_keys(info, source, tolerate_mismatch)
        cls._strict_check_finite(model, source, files)
        return (model, info) if return_info else model

    @staticmethod
    def _strict_weight_files(folder: str, variant=None) -> dict:
        """{checkpoint key: file} of a local folder's safetensors weights, after checking each file's header and size
        (a truncated or corrupt file is an `OSError` naming it and the first tensor it cannot hold)."""
        import json
        import os

        def named(name):  # transformers' variant naming: model.safetensors -> model.VARIANT.safetensors
            parts = name.split(".")
            return ".".join(parts[:-1] + [variant, parts[-1]]) if variant else name

        index = os.path.join(folder, named("model.safetensors.index.json"))
        single = os.path.join(folder, named("model.safetensors"))
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as handle:
                    weight_map = dict(json.load(handle)["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise OSError(f"{index}: not a readable safetensors index ({error}).") from None
            names = sorted(set(weight_map.values()))
        elif os.path.isfile(single):
            weight_map, names = None, [os.path.basename(single)]
        else:
            return {}
        keys = {}
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise OSError(f"{path} is missing: {os.path.basename(index)} lists weights in it.")
            for key in LLaDA2MoePreTrainedModel._strict_read_header(path):
                keys[key] = path
        for key, name in (weight_map or {}).items():
            if keys.get(key) != os.path.join(folder, name):
                raise OSError(f"{index} puts `{key}` in {name}, which does not hold it.")
        return keys

    @staticmethod
    def _strict_read_header(path: str) -> list:
        """The tensor names of one safetensors file, after checking that its header parses and that every tensor's
        bytes lie inside the file (the format: an 8-byte little-endian header length, a JSON header, the data)."""
        import json
        import os

        itemsize = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                    "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
        size = os.path.getsize(path)
        try:
            with open(path, "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                if size < 8 or length > size - 8:
                    raise ValueError(f"its header claims {length} bytes but the file has {size}")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise OSError(f"{path}: not a readable safetensors file ({error}); convert or download it again.") from None
        if not isinstance(header, dict):
            raise OSError(f"{path}: not a readable safetensors file (its header is not a JSON object).")
        data = size - 8 - length
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            try:
                begin, end = (int(v) for v in entry["data_offsets"])
                count = 1
                for side in entry["shape"]:
                    count *= int(side)
                expected = count * itemsize.get(entry["dtype"], end - begin)
            except (KeyError, TypeError, ValueError):
                raise OSError(f"{path}: the header entry of `{key}` is malformed; convert or download it again.") \
                    from None
            if end > data:
                raise OSError(f"{path} is truncated: `{key}` needs bytes up to {end} of the data, the file holds "
                              f"{data}; convert or download it again.")
            if end - begin != expected or begin < 0:
                raise OSError(f"{path}: `{key}` takes {end - begin} bytes but its shape and dtype need {expected}.")
        return [key for key in header if key != "__metadata__"]

    @staticmethod
    def _strict_check_config(config, source):
        """Values the config class lets through but no model can use (non-finite or non-positive scales)."""
        import math

        text = config.get_text_config()
        names = ["rms_norm_eps", "rope_theta"]
        if text.first_k_dense_replace < text.num_hidden_layers:
            names.append("routed_scaling_factor")
        for name in names:
            value = getattr(text, name, None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                where = f"{source}/config.json" if source else "the config"
                raise ValueError(f"{where}: `{name}` must be a finite number > 0, got {value!r}.")

    @classmethod
    def _strict_check_keys(cls, info: dict, source, tolerate_mismatch: bool):
        import re

        ignored = [re.compile(pattern) for pattern in (cls._keys_to_ignore_on_load_missing or [])]
        missing = sorted(key for key in info.get("missing_keys", ()) if not any(p.search(key) for p in ignored))
        unexpected = sorted(info.get("unexpected_keys", ()))
        mismatched = [] if tolerate_mismatch else sorted(info.get("mismatched_keys", ()))
        where = source or "the state dict"
        if missing or unexpected or mismatched or info.get("error_msgs"):
            lines = []
            if missing:
                lines.append(f"{len(missing)} weight(s) the config needs are not in the checkpoint (would be random): "
                             f"{cls._strict_shorten(missing)}")
            if unexpected:
                lines.append(f"{len(unexpected)} stored weight(s) the config has no place for (would be dropped): "
                             f"{cls._strict_shorten(unexpected)}")
            if mismatched:
                shown = [f"{key} (stored {tuple(stored)}, config needs {tuple(wanted)})"
                         for key, stored, wanted in mismatched[:3]]
                lines.append(f"{len(mismatched)} weight(s) of another shape: {'; '.join(shown)}")
            lines.extend(str(message) for message in info.get("error_msgs", ()))
            raise ValueError(f"{where}: config.json and the weights disagree: " + "; ".join(lines) + ". Re-convert "
                             "the checkpoint, or fix config.json (e.g. `num_hidden_layers`) to match its weights.")

    @staticmethod
    def _strict_shorten(keys: list, shown: int = 4) -> str:
        return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")

    @staticmethod
    def _strict_check_finite(model, source, files: dict):
        """Refuse NaN / inf in any loaded floating-point tensor, naming the first one and its file. NaN and inf survive
        a sum, so each 16M-element chunk costs one float32 sum (bounded memory, one device sync per tensor); only a
        chunk whose sum is not finite is looked at element by element (a finite weight can overflow a sum)."""
        chunk, seen = 1 << 24, set()
        named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
        for key, tensor in named:
            if id(tensor) in seen or tensor is None or not tensor.is_floating_point() or tensor.device.type == "meta":
                continue
            seen.add(id(tensor))
            flat = tensor.detach().reshape(-1)
            wide = torch.float64 if flat.dtype == torch.float64 else torch.float32
            starts = range(0, flat.numel(), chunk)
            sums = torch.stack([flat[i:i + chunk].to(wide).sum() for i in starts]) if flat.numel() else None
            if sums is None or bool(torch.isfinite(sums).all()):
                continue
            if all(bool(torch.isfinite(flat[i:i + chunk].to(wide)).all()) for i in starts):
                continue
            origin = files.get(key) or (f"{source}" if source else "the state dict")
            if key not in files and key.rsplit(".", 1)[-1] in ("inv_freq", "original_inv_freq"):
                origin = f"{source}/config.json (rope settings)" if source else "the config's rope settings"
            raise ValueError(f"{origin}: `{key}` holds NaN or inf values; the checkpoint is damaged (re-convert or "
                             "re-download it).")

def _init(name, tensor, **kwargs):
    # transformers' init helpers skip tensors already loaded from a checkpoint; fall back to torch's where absent.
    try:
        from transformers import initialization
    except ImportError:  # transformers < 5
        initialization = nn.init
    return getattr(initialization, name)(tensor, **kwargs)


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    # What `output_hidden_states` / `output_attentions` / `output_router_logits` collect, through transformers' output
    # capturing: only what is asked for is recorded, and the layers return nothing else.
    _can_record_outputs = {
        "hidden_states": LLaDA2MoeDecoderLayer,
        "attentions": OutputRecorder(LLaDA2MoeAttention, index=1),
        "router_logits": OutputRecorder(LLaDA2MoeSparseMoeBlock, index=1),
    }

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(LLaDA2MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LLaDA2MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LLaDA2MoeRotaryEmbedding(config)
        self.gradient_checkpointing = False
        if config.experts_fp8 is not None:  # FP8 block scales are loaded and kept in float32 whatever the dtype
            self._keep_in_fp32_modules_strict = [*self._keep_in_fp32_modules_strict, "gate_up_proj_scale_inv",
                                                 "down_proj_scale_inv"]
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    @capture_outputs
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_router_logits: Optional[bool] = None,
        cache=None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        r"""
        output_attentions / output_hidden_states / output_router_logits: read by `capture_outputs` (defaults: the
            config's); hidden states are the input of each layer plus the final normed state.
        """
        past_key_values = _one_cache(past_key_values, cache)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)
            position_ids = position_ids.unsqueeze(0).expand(batch, -1)
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0).expand(batch, -1)
        attention_mask = prepare_attention_mask(
            attention_mask,
            batch=batch,
            query_length=length,
            key_length=past_length + length,
            dtype=inputs_embeds.dtype,
            attn_implementation=self.config._attn_implementation,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states, **{_cache_field(MoeModelOutputWithPast): past_key_values}
        )


def prepare_attention_mask(attention_mask, *, batch, query_length, key_length, dtype, attn_implementation):
    """Normalise a user mask to the 4-D form the attention backends agree on.

    Accepted: `None` (full bidirectional attention), a 2-D padding mask [B, key_length] (1 = real token), or a 4-D
    mask [B or 1, 1, query_length, key_length], either bool (True = may attend) or additive float (0 / -inf or
    finfo.min). SDPA reads bool and additive masks alike; eager and other backends *add* the mask, so bool masks are
    turned into additive ones for them (a bool mask added as 0/1 would silently be wrong).
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        if attention_mask.shape != (batch, key_length):
            raise ValueError(
                f"a 2-D `attention_mask` must have shape [batch, past + new tokens] = {[batch, key_length]}, "
                f"got {list(attention_mask.shape)}."
            )
        attention_mask = attention_mask.bool()[:, None, None, :].expand(batch, 1, query_length, key_length)
    elif attention_mask.dim() == 4:
        if attention_mask.shape[-2:] != (query_length, key_length) or attention_mask.shape[0] not in (1, batch):
            raise ValueError(
                f"a 4-D `attention_mask` must have shape [batch, 1, query_length, key_length] = "
                f"{[batch, 1, query_length, key_length]}, got {list(attention_mask.shape)}."
            )
    else:
        raise ValueError(f"`attention_mask` must be 2-D or 4-D, got {attention_mask.dim()}-D.")
    if attention_mask.dtype == torch.bool:
        if attn_implementation == "sdpa":
            return attention_mask
        return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            ~attention_mask, torch.finfo(dtype).min
        )
    # Additive masks follow the compute dtype (SDPA rejects e.g. a bf16 mask with fp32 queries).
    return attention_mask.to(dtype)


class LLaDA2MoeForCausalLM(LLaDA2MoePreTrainedModel, LLaDA2MoeGenerationMixin):
    """LLaDA2 backbone + untied LM head. Logits are unshifted (position i predicts token i) and returned in fp32."""

    _tied_weights_keys = {}

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = defaults_for_model(config, validate=False)  # every default, saved with the model

    def get_input_embeddings(self):
        return self.model.word_embeddings

    def set_input_embeddings(self, value):
        self.model.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model

    @classmethod
    def can_generate(cls) -> bool:
        # transformers would say True for any base whose name contains "GenerationMixin"; the real reason is that the
        # class has a generate() (block diffusion, `generation_llada2_uni.py`) and the generation config it reads.
        return callable(getattr(cls, "generate", None)) and callable(getattr(cls, "prepare_inputs_for_generation", None))

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_router_logits: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        cache=None,
        objective: Optional[str] = None,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> Union[tuple, MoeCausalLMOutputWithPast]:
        r"""
        labels (`torch.LongTensor` [B, L], *optional*): the training loss; what it is depends on the objective alone
            (`objective`, else `config.diffusion_training["objective"]`, default "block"), never on the tokens:
            * "block" / "full" (masked diffusion, `training_llada2_uni.py`): `input_ids` are clean sequences (what the
              collators give) and `labels` mark the supervised positions (the clean token there, -100 elsewhere).
              Each sample is masked at a random ratio, run ([x_t ; x_0] under the block-diffusion mask for "block"),
              and the loss covers the masked positions. The returned `logits` are those of x_t. `attention_mask` must
              be the 2-D padding mask (or None).
            * "cross_entropy": the inputs are run as given (the caller noised them, any `attention_mask`), and the loss
              is the plain unshifted cross-entropy against `labels` (-100 ignored).
        objective (`str`, *optional*): "block", "full" or "cross_entropy" for this call, instead of the config's.
        generator (`torch.Generator`, *optional*): the random source of the masked-diffusion noise (mask ratios and
            positions); the global one when None.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Keep only the last `logits_to_keep` positions (an int) or the given positions (a 1-D index tensor).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        past_key_values = _one_cache(past_key_values, cache)
        # Only the flags given are passed on: the backbone reads the config's for the others.
        flags = {name: value for name, value in (("output_attentions", output_attentions),
                                                 ("output_hidden_states", output_hidden_states),
                                                 ("output_router_logits", output_router_logits)) if value is not None}
        if labels is None and objective is not None:
            raise ValueError("`objective` chooses the loss of `labels`, and no `labels` were given.")
        text_config = self.config.get_text_config()
        training = DiffusionTrainingArguments.from_config(text_config, objective) if labels is not None else None
        if training is not None and training.objective in DIFFUSION_OBJECTIVES:
            if input_ids is None or past_key_values is not None:
                raise ValueError(f"the {training.objective!r} objective masks clean `input_ids` itself and runs without "
                                 "a cache; for inputs_embeds or a cache, use objective='cross_entropy'.")
            loss, logits, outputs = masked_diffusion_forward(
                self, input_ids, labels, attention_mask, text_config.mask_token_id, args=training, generator=generator,
                logits_to_keep=torch.arange(input_ids.shape[1], device=input_ids.device), **flags, **kwargs,
            )
            output = MoeCausalLMOutputWithPast(
                loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                router_logits=outputs.router_logits,
            )
            return output if return_dict else output.to_tuple()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **flags,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states).float()

        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"`labels` must have shape {list(logits.shape[:2])}, got {list(labels.shape)}.")
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device))

        output = MoeCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{_cache_field(MoeCausalLMOutputWithPast): getattr(outputs, _cache_field(type(outputs)))},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits,
        )
        return output if return_dict else output.to_tuple()


# The name the original release uses for the same class.
LLaDA2MoeModelLM = LLaDA2MoeForCausalLM

__all__ = [
    "LLaDA2MoePreTrainedModel",
    "LLaDA2MoeModel",
    "LLaDA2MoeForCausalLM",
    "LLaDA2MoeModelLM",
]
