"""Block-masked diffusion sampling for LLaDA2 models (the LLaDA2.0 `generate` algorithm, with an exact block KV cache).

The canvas (prompt + `gen_length` masks, rounded up to whole blocks) is denoised one `block_length` block at a time.
Attention is block-causal: a token sees its own block and every earlier block. Inside a block, each step predicts
every masked position, then commits either all predictions whose confidence beats `threshold` (when they meet the
step's quota) or the quota's most confident ones. Committed tokens are final.

Because a finished block never attends to later tokens, its keys and values are final too: they are cached once and
each later step only runs the active block. The cached and uncached paths make the same decisions.

`sprint=` turns on SPRINT (`sprint_llada2_uni.py`): a pruned prefix and adaptive unmasking on top of the cache; it is
approximate and off by default.
"""

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .generation_config_llada2_uni import (
    LLaDA2GenerationConfig,
    fit_length,
    named_like_the_original,
    resolve_generation_config,
)
from .sprint_llada2_uni import SprintConfig, SprintRun

# generate() keywords transformers' own callers (pipelines, peft) pass that carry nothing for diffusion decoding.
_IGNORED_KWARGS = ("use_cache", "synced_gpus", "token_type_ids")


@dataclass
class LLaDA2GenerateOutput(ModelOutput):
    """
    sequences (`torch.LongTensor` [B, prompt + generated]): the prompt followed by the generated ids; positions after
        a row's first EOS (and past a shorter row's end) hold `pad_token_id`. Image modes: the prompt (for thinking,
        with the reasoning and the image header) followed by the image codes as vocabulary ids.
    num_forward_passes (`int`): denoising forwards (the original's `num_forward_calls`).
    history (`tuple[torch.LongTensor]`, *optional*): the generated region [B, gen_length] after every forward,
        masks included, for visualisation.
    image_tokens (`torch.LongTensor` [B, h*w], *optional*): image modes: offset-free VQ codes (-1 after an image the
        model closed early with `restrict_to_image_vocab=False`).
    image_grid (`tuple[int, int]`, *optional*): image modes: the token grid (h, w).
    thinking_ids (`tuple[torch.LongTensor]`, *optional*): thinking mode: each row's reasoning ids (before the image).
    """

    sequences: Optional[torch.LongTensor] = None
    num_forward_passes: Optional[int] = None
    history: Optional[tuple] = None
    image_tokens: Optional[torch.LongTensor] = None
    image_grid: Optional[tuple] = None
    thinking_ids: Optional[tuple] = None


class BlockDiffusionCache:
    """Keys/values of finished blocks, in preallocated buffers.

    Every layer writes the tokens of the current forward after the cached prefix; `crop(n)` then keeps the first `n`
    positions, so the active block's entries are overwritten by the next step instead of being appended.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.keys: list = []
        self.values: list = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"BlockDiffusionCache holds {self.capacity} positions; {end} were requested.")
        if layer_idx == len(self.keys):
            shape = (*key_states.shape[:-2], self.capacity, key_states.shape[-1])
            self.keys.append(key_states.new_empty(shape))
            self.values.append(value_states.new_empty((*shape[:-1], value_states.shape[-1])))
        self.keys[layer_idx][..., self.length : end, :] = key_states
        self.values[layer_idx][..., self.length : end, :] = value_states
        return self.keys[layer_idx][..., :end, :], self.values[layer_idx][..., :end, :]

    def crop(self, length: int):
        self.length = length


def transfer_schedule(block_length: int, steps: int) -> list:
    """Tokens to commit at each step of a block: an even split, the remainder going to the first steps."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if step < extra else 0) for step in range(steps)]


def _filter_top_k(logits, top_k):
    if not top_k or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits, top_p):
    if top_p is None or top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses top_p
    remove[..., 0] = False
    return logits.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))


def sample_tokens(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """Candidate token and its probability (the confidence) for every position of `logits` [..., V]."""
    logits = logits.float()
    if temperature == 0.0:
        probs = logits.softmax(dim=-1)
        confidence, tokens = probs.max(dim=-1)
        return tokens, confidence
    flat = logits.reshape(-1, logits.shape[-1]) / temperature
    flat = _filter_top_p(_filter_top_k(flat, top_k), top_p)
    probs = flat.softmax(dim=-1)
    tokens = torch.multinomial(probs, num_samples=1, generator=generator)
    confidence = probs.gather(-1, tokens)
    return tokens.view(logits.shape[:-1]), confidence.view(logits.shape[:-1])


def select_transfers(confidence, active, quota, threshold):
    """Boolean [B, L] of positions to commit: all above `threshold` if they meet `quota`, else the top-`quota`."""
    confidence = confidence.masked_fill(~active, float("-inf"))
    above = confidence > threshold
    enough = above.sum(dim=-1) >= quota
    k = torch.clamp(active.sum(dim=-1), max=quota)
    ranks = torch.empty_like(confidence, dtype=torch.long)
    ranks.scatter_(-1, confidence.argsort(dim=-1, descending=True, stable=True),
                   torch.arange(confidence.shape[-1], device=confidence.device).expand_as(confidence))
    top = ranks < k.unsqueeze(-1)
    return torch.where(enough.unsqueeze(-1), above, top) & active


class LLaDA2MoeGenerationMixin:
    """`generate()` for LLaDA2 models: block-masked diffusion with an exact KV cache of finished blocks."""

    _HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
    _is_stateful = False  # the block cache lives inside one generate() call; nothing carries over

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             **kwargs):
        """Called by `from_pretrained`: load `generation_config.json` as a `LLaDA2GenerationConfig` when present."""
        if generation_config is not None:
            self.generation_config = LLaDA2GenerationConfig(**generation_config.to_dict())
        elif pretrained_model_name_or_path is not None:
            hub_kwargs = {key: kwargs[key] for key in self._HUB_KWARGS if kwargs.get(key) is not None}
            try:
                self.generation_config = LLaDA2GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
            except OSError:
                pass  # no generation_config.json: the release defaults stand

    @property
    def generation_device(self) -> torch.device:
        """Where generate() builds its tensors: the model's device, or, when accelerate's offload hooks hold the
        weights elsewhere (on `meta` until a module runs), the device those hooks run it on."""
        for module in self.modules():
            device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if device is not None:
                return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        return self.device

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """The forward inputs of one step (transformers and peft look this method up; the diffusion loop builds its
        own inputs, so it is a pass-through)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs.update({key: value for key, value in kwargs.items() if key not in _IGNORED_KWARGS})
        return inputs

    def _generation_settings(self, generation_config, kwargs) -> tuple:
        """(resolved `LLaDA2GenerationConfig`, explicitly requested field names); consumes the setting kwargs."""
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            raise ValueError(f"`generation_config` must be a GenerationConfig, got {type(generation_config).__name__}.")
        own = getattr(self, "generation_config", None)
        if own is not None and not isinstance(own, LLaDA2GenerationConfig):
            own = LLaDA2GenerationConfig(**own.to_dict())
        for key in _IGNORED_KWARGS:
            kwargs.pop(key, None)
        return resolve_generation_config(self.config, own, generation_config, kwargs)

    @staticmethod
    def _refuse_unknown(kwargs):
        if kwargs:
            raise ValueError(f"unknown generate() argument(s) {sorted(kwargs)}; settings are the fields of "
                             "LLaDA2GenerationConfig (see docs/generation.md).")

    @torch.no_grad()
    def generate(
        self,
        inputs: Optional[torch.LongTensor] = None,
        generation_config: Optional[GenerationConfig] = None,
        logits_processor=None,
        stopping_criteria=None,
        attention_mask: Optional[torch.Tensor] = None,
        streamer=None,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ):
        r"""
        Block-diffusion generation of `max_new_tokens` tokens after `inputs`.

        Args:
            inputs / input_ids (`torch.LongTensor` [B, P]): prompts, left-padded when `attention_mask` marks padding.
            generation_config (`LLaDA2GenerationConfig`, *optional*): base settings (default: the model's
                `generation_config`); keyword arguments override them.
            logits_processor (`LogitsProcessorList`, *optional*): applied to every denoising step's logits, position
                by position (`input_ids` = the canvas up to the active block's end, masks included).
            stopping_criteria (`StoppingCriteriaList`, *optional*): checked when a block is finished, with the
                prompt + generated ids so far; rows it marks done stop.
            attention_mask (`torch.Tensor` [B, P], *optional*): 1 for real tokens, 0 for left padding.
            streamer (*optional*): a transformers streamer (batch 1); it receives the prompt, then each finished
                block. A streamer with `put_draft` also gets the partly denoised block after every step.
            generator (`torch.Generator`, *optional*): randomness for sampling.
            **kwargs: any `LLaDA2GenerationConfig` field, under its own name or the original one (`gen_length`,
                `eos_id`, `mask_id`). `eos_token_id=None` means no EOS.

        Returns:
            `torch.LongTensor` [B * num_return_sequences, P + generated] (prompt then generated ids), or
            `LLaDA2GenerateOutput` when `return_dict_in_generate=True`.
        """
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        with named_like_the_original():
            inputs = check_input_ids(inputs, self.config.get_text_config().vocab_size)
            config, explicit = self._generation_settings(generation_config, kwargs)
            self._refuse_unknown(kwargs)
            return self._generate_text(inputs, attention_mask, config, explicit, logits_processor=logits_processor,
                                       stopping_criteria=stopping_criteria, streamer=streamer, generator=generator)

    def _generate_text(self, inputs, attention_mask, config, explicit, *, logits_processor=None,
                       stopping_criteria=None, streamer=None, generator=None):
        if config.generation_mode not in (None, "text"):
            raise ValueError(f"`generation_mode`={config.generation_mode!r} needs an LLaDA2.0-Uni model; this one "
                             "generates text only.")
        inputs, attention_mask = repeat_rows(config.num_return_sequences, inputs, attention_mask)
        prompts = split_prompts(inputs, attention_mask)
        longest = max(len(p) for p in prompts)
        limit = self.config.get_text_config().max_position_embeddings
        if longest > limit:
            raise ValueError(f"`input_ids` has a prompt of {longest} tokens, longer than max_position_embeddings={limit}.")
        config.max_new_tokens = fit_length(config, explicit, "max_new_tokens", longest, limit)
        if streamer is not None and len(prompts) != 1:
            raise ValueError("`streamer` supports batch size 1 only (and num_return_sequences=1).")

        canvas = build_canvas(prompts, config, self.generation_device)
        if streamer is not None:
            streamer.put(prompts[0].cpu())
        generated, passes, history = self._run_blocks(
            canvas, config, streamer=streamer, generator=generator, image_range=self._image_id_range(),
            logits_processor=logits_processor, stopping_criteria=stopping_criteria, prefix_ids=inputs)
        sequences = finish_rows(generated, config.eos_token_id, config.pad_token_id, config.mask_token_id)
        output = torch.cat([inputs.to(sequences.device), sequences], dim=1)
        if streamer is not None:
            streamer.end()
        if config.return_dict_in_generate:
            return LLaDA2GenerateOutput(sequences=output, num_forward_passes=passes, history=history)
        return output

    def _image_id_range(self):
        """(first, end) of the image-code ids when the model has images (SPRINT's per-modality ratios), else None."""
        offset, size = getattr(self.config, "image_token_offset", None), getattr(self.config, "codebook_size", None)
        if offset is None:
            return None
        return (offset, offset + size if size else self.config.get_text_config().vocab_size)

    def _run_blocks(self, canvas, config, *, combine=None, vocab_range=None, stop_rule="block", streamer=None,
                    generator=None, constrain=None, image_range=None, logits_processor=None, stopping_criteria=None,
                    prefix_ids=None):
        """Denoise `canvas` block by block; returns (generated ids [B, gen_length], forward count, history).

        `combine` maps the logits of all canvas rows [R, L, V] to those of the B primary rows (guidance); rows after
        the primary ones mirror their primary row's generated tokens. `vocab_range` = (lo, hi) restricts sampling to
        those ids. `stop_rule`: "block" (text: a row stops after the block holding its first EOS, or mid-block on a
        step committing a settled EOS when `eos_early_stop`), or "settled" (a row stops on any step once its first
        `eos_token_id` has nothing masked before it).
        `constrain(logits, tokens, start, end) -> (logits [B, L, V], allow [B, L] bool)`, when given, runs last on
        every step's logits (all rows when `combine` is None) with the live canvas; only positions where `allow` is
        True may be committed on that step, and a block then takes extra steps (quota >= 1) until it has no mask left.
        `config.sprint` (not with `constrain`) prunes the prefix after each block's warm-up steps and commits
        adaptively; `image_range` = (lo, hi) are the ids SPRINT counts as image tokens.
        `logits_processor` runs on the primary rows' logits after all of the above; `stopping_criteria` (text rule
        "block" only) sees `prefix_ids` + the generated ids after every block.
        """
        L, G, mask_id, stop_id = config.block_length, config.max_new_tokens, config.mask_token_id, config.eos_token_id
        if G // config.minimal_topk < 1:
            raise ValueError(f"`minimal_topk` ({config.minimal_topk}) must be <= `max_new_tokens` ({G}).")
        tokens, gen_start = canvas.tokens, canvas.gen_start
        batch, total = len(gen_start), tokens.shape[1]
        allowed = _block_causal_mask(canvas.key_valid, L)
        steps = min(config.steps, G // config.minimal_topk)
        quotas = transfer_schedule(L, steps)
        finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        cache = BlockDiffusionCache(total) if config.use_block_cache else None
        cached, passes, history, streamed_eos = 0, 0, [], False
        settings = SprintConfig.from_setting(config.sprint) if constrain is None else None
        sprint = SprintRun(settings, self, canvas, L, image_range) if settings is not None else None
        gen_index = torch.tensor(gen_start, device=tokens.device).unsqueeze(1) + torch.arange(G, device=tokens.device)

        for block in range(canvas.first_block, total // L):
            start, end = block * L, (block + 1) * L
            if sprint is not None:
                sprint.start_block()
            for step in range(steps) if constrain is None else itertools.count():
                active = (tokens[:batch, start:end] == mask_id) & ~finished.unsqueeze(1)
                if not active.any():
                    break
                if sprint is not None and sprint.view is not None:
                    # SPRINT after the warm-up: the block against the pruned prefix, at its own positions.
                    logits = self(input_ids=tokens[:, start:end], attention_mask=sprint.view_mask,
                                  position_ids=canvas.positions[:, start:end], past_key_values=sprint.view,
                                  logits_to_keep=L).logits
                else:
                    lo = cached if cache is not None else 0
                    forward = dict(input_ids=tokens[:, lo:end], attention_mask=allowed[:, :, lo:end, :end],
                                   position_ids=canvas.positions[:, lo:end], past_key_values=cache, logits_to_keep=L)
                    with sprint.probing(start) if sprint is not None else contextlib.nullcontext():
                        logits = self(**forward).logits
                    if cache is not None:
                        cache.crop(start)
                        cached = start
                passes += 1
                if combine is not None:
                    logits = combine(logits)
                if vocab_range is not None:
                    logits = restrict_vocab(logits, *vocab_range)
                quota = quotas[step] if step < steps else max(1, quotas[-1])
                if constrain is not None:
                    logits, allow = constrain(logits, tokens, start, end)
                    active = active & allow
                    if not active.any():
                        raise RuntimeError("`constrain` allowed no masked position to be committed.")
                if logits_processor is not None:
                    logits = apply_logits_processor(logits_processor, tokens[:batch, :end], logits)
                sampled, confidence = sample_tokens(logits, config.temperature, config.top_k, config.top_p, generator)
                if sprint is None:
                    commit = select_transfers(confidence, active, quota, config.threshold)
                else:
                    commit = sprint.quota_and_commit(logits, confidence, active, step, steps, config.threshold)
                    sprint.after_step(commit, confidence, step, cache, allowed, start, batch)
                tokens[:batch, start:end] = torch.where(commit, sampled, tokens[:batch, start:end])
                for row, source in canvas.mirrors:
                    begin = max(start, gen_start[source])
                    tokens[row, begin:end] = tokens[source, begin:end]
                if config.output_history:
                    history.append(tokens[:batch].gather(1, gen_index).cpu())
                if streamer is not None and hasattr(streamer, "put_draft"):
                    streamer.put_draft(tokens[0, max(start, gen_start[0]) : min(end, gen_start[0] + G)].cpu())
                if stop_id is not None and (stop_rule == "settled" or config.eos_early_stop):
                    settled = _eos_settled(tokens, gen_start, end, stop_id, mask_id)
                    if stop_rule == "block":  # the original text rule: only on a step that commits an EOS
                        settled &= (commit & (sampled == stop_id)).any(dim=1)
                    finished |= settled
            if streamer is not None and not streamed_eos:
                region = tokens[0, max(start, gen_start[0]) : min(end, gen_start[0] + G)]
                streamed_eos = _stream_block(streamer, region, stop_id)
            if stop_id is not None and stop_rule == "block":
                for row in range(batch):
                    if (tokens[row, gen_start[row] : end] == stop_id).any():
                        finished[row] = True
            if stopping_criteria is not None and stop_rule == "block":
                done_so_far = min(G, end - min(gen_start))
                so_far = tokens[:batch].gather(1, gen_index[:, :done_so_far])
                seen = torch.cat([prefix_ids.to(tokens.device), so_far], dim=1)
                finished |= torch.as_tensor(stopping_criteria(seen, None), device=tokens.device).bool()
            if finished.all():
                break
        return tokens[:batch].gather(1, gen_index), passes, tuple(history) or None


@dataclass
class DiffusionCanvas:
    """Rows to denoise: `tokens` / `positions` / `key_valid` [R, T]; the first B rows are the outputs (B =
    len(gen_start)), the others are guidance rows listed in `mirrors` as (row, primary row)."""

    tokens: torch.LongTensor
    positions: torch.LongTensor
    key_valid: torch.BoolTensor
    gen_start: list
    first_block: int
    mirrors: list = field(default_factory=list)


def build_canvas(prompts, config, device, guidance_prompts=None) -> DiffusionCanvas:
    """Lay prompts out for denoising.

    Each primary row keeps its own block alignment (blocks start at multiples of block_length from its first real
    token): rows are shifted by whole blocks so that every row's first active block is the same canvas block, padding
    is never attended to, and positions start at 0 on the first real token. A guidance prompt (CFG) for primary row i
    is right-aligned to end where row i's prompt ends, so both share the canvas blocks after it.
    """
    L, G = config.block_length, config.max_new_tokens
    guidance_prompts = guidance_prompts or []
    first_block = max(len(p) // L for p in prompts)
    offsets = [L * (first_block - len(p) // L) for p in prompts]
    ends = [off + math.ceil((len(p) + G) / L) * L for off, p in zip(offsets, prompts)]
    for source, prompt in guidance_prompts:
        offsets.append(offsets[source] + len(prompts[source]) - len(prompt))
        ends.append(ends[source])
    rows = list(prompts) + [prompt for _, prompt in guidance_prompts]
    if min(offsets) < 0:
        raise ValueError("a guidance prompt is longer than the prompt it guides and does not fit the canvas.")
    total = max(ends)
    tokens = torch.full((len(rows), total), config.pad_token_id, dtype=torch.long, device=device)
    positions = torch.zeros((len(rows), total), dtype=torch.long, device=device)
    key_valid = torch.zeros((len(rows), total), dtype=torch.bool, device=device)
    for row, (prompt, off, end) in enumerate(zip(rows, offsets, ends)):
        tokens[row, off : off + len(prompt)] = prompt.to(device)
        tokens[row, off + len(prompt) : end] = config.mask_token_id
        positions[row, off:] = torch.arange(total - off, device=device)
        key_valid[row, off:] = True
    gen_start = [off + len(p) for off, p in zip(offsets, prompts)]
    mirrors = [(len(prompts) + i, source) for i, (source, _) in enumerate(guidance_prompts)]
    return DiffusionCanvas(tokens, positions, key_valid, gen_start, first_block, mirrors)


def restrict_vocab(logits, lo, hi):
    """Keep only ids in [lo, hi) (e.g. the image codes); everything else gets -inf."""
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[lo:hi] = True
    return logits.masked_fill(~keep, float("-inf"))


def split_prompts(inputs, attention_mask, name="attention_mask"):
    """Real tokens of each row; padding must be on the left."""
    if attention_mask is None:
        return list(inputs)
    if attention_mask.shape != inputs.shape:
        raise ValueError(
            f"`{name}` must have the shape of `inputs` {list(inputs.shape)}, got {list(attention_mask.shape)}."
        )
    keep = attention_mask.bool()
    prompts = []
    for row, row_keep in enumerate(keep):
        count = int(row_keep.sum())
        if count == 0:
            raise ValueError(f"`{name}` row {row} has no real token.")
        if not row_keep[-count:].all():
            raise ValueError(f"`{name}` must describe left padding (zeros first, then ones).")
        prompts.append(inputs[row, -count:])
    return prompts


def _block_causal_mask(key_valid, block_length):
    """[B, 1, T, T] bool: a query sees its own and earlier blocks, never padding (a padding query sees itself)."""
    total = key_valid.shape[1]
    block = torch.arange(total, device=key_valid.device) // block_length
    allowed = (block.unsqueeze(1) >= block.unsqueeze(0)).unsqueeze(0) & key_valid.unsqueeze(1)
    allowed |= torch.eye(total, dtype=torch.bool, device=key_valid.device).unsqueeze(0)
    return allowed.unsqueeze(1)


def _stream_block(streamer, tokens, eos_id):
    """Send a finished block's tokens, up to and including the first EOS; True once EOS has been sent."""
    tokens = tokens.cpu()
    hits = (tokens == eos_id).nonzero() if eos_id is not None else []
    if len(hits):
        tokens = tokens[: int(hits[0]) + 1]
    if len(tokens):
        streamer.put(tokens)
    return bool(len(hits))


def _eos_settled(canvas, gen_start, end, eos_id, mask_id):
    """Rows whose first generated EOS is committed with no mask between the prompt and it."""
    settled = torch.zeros(len(gen_start), dtype=torch.bool, device=canvas.device)
    for row, begin in enumerate(gen_start):
        region = canvas[row, begin:end]
        hits = (region == eos_id).nonzero()
        if len(hits) and not (region[: int(hits[0])] == mask_id).any():
            settled[row] = True
    return settled


def finish_rows(generated, eos_id, fill, mask_id):
    """Everything after a row's first EOS, and every position never generated (a row stopped early), becomes `fill`;
    trailing columns that are `fill` in every row are dropped."""
    unused = generated == mask_id
    if eos_id is not None:
        is_eos = generated == eos_id
        unused |= (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    if not unused.any():
        return generated
    generated = generated.masked_fill(unused, fill)
    used = (~unused).long() * torch.arange(1, generated.shape[1] + 1, device=generated.device)
    kept = int(used.max()) if used.numel() else 0
    return generated[:, :kept]


def guide_logits(cond, uncond, scale, no_image=None, image_scale=0.0):
    """Classifier-free guidance on logits, the one formula of every mode: U + scale * (C - U), plus
    image_scale * (U - N) for editing's image-dropped rows N."""
    guided = uncond + scale * (cond - uncond)
    if no_image is not None:
        guided = guided + image_scale * (uncond - no_image)
    return guided


def apply_logits_processor(processors, context, logits):
    """transformers logits processors work on [rows, V] with the ids so far; a denoising step has [B, L, V]: every
    position is a row, each seeing its own row's canvas."""
    batch, length, vocab = logits.shape
    scores = processors(context.repeat_interleave(length, dim=0), logits.reshape(batch * length, vocab).float())
    return scores.reshape(batch, length, vocab)


def repeat_rows(count, *tensors):
    """Each row `count` times in a row (num_return_sequences); None stays None."""
    if count == 1:
        return tensors
    return tuple(None if t is None else t.repeat_interleave(count, dim=0) for t in tensors)


def check_input_ids(ids, vocab_size, name="input_ids"):
    """A [B, P] LongTensor of vocabulary ids ([P] is one row); anything else is a ValueError naming `name`."""
    if ids is None:
        raise ValueError(f"`inputs` (or `{name}`) is required: a LongTensor of prompt ids [batch, length].")
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.LongTensor [batch, length], got {type(ids).__name__}.")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"`{name}` must hold integer ids, got dtype {ids.dtype}.")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty [batch, length] tensor, got shape {list(ids.shape)}.")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"`{name}` holds ids outside the vocabulary [0, {vocab_size}): "
                         f"[{int(ids.min())}, {int(ids.max())}].")
    return ids.long()


__all__ = ["LLaDA2GenerationConfig", "LLaDA2GenerateOutput", "LLaDA2MoeGenerationMixin", "BlockDiffusionCache",
           "build_canvas", "check_input_ids", "finish_rows", "guide_logits", "repeat_rows", "split_prompts"]
