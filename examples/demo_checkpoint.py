"""Build a tiny LLaDA2 MoE checkpoint with RANDOM weights and an in-process word-level tokenizer.

It exists so that the README's first command runs end to end on any machine in seconds: the folder it writes has
the same layout as a converted LLaDA2 checkpoint (config with auto_map, remote-code files, safetensors, tokenizer,
generation config), but the model is untrained, so what it generates is noise.
"""

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from transformers_llada_uni import LLaDA2GenerationConfig, LLaDA2MoeConfig, LLaDA2MoeForCausalLM

SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>"]
WORDS = (
    "SYSTEM HUMAN ASSISTANT the a an of to and in is it that on for with as was at by this be are from or have not "
    "what which who how why where when red green blue yellow circle square triangle left right top bottom big small "
    "picture image shape colour color draw show make write tell story cat dog fox snow tree sky sun moon night day "
    "hello world model diffusion token block mask answer question yes no one two three . , ? !"
).split()


def build_demo_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Write the demo checkpoint into `folder` (created) and return it."""
    folder = Path(folder)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + ["<unk>"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        mask_token="<|mask|>",
        unk_token="<unk>",
    )
    config = LLaDA2MoeConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=16,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=16,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        max_position_embeddings=2048,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        mask_token_id=vocab["<|mask|>"],
    )
    torch.manual_seed(seed)
    model = LLaDA2MoeForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # confident random predictions, so decoding commits several tokens per step
    model.generation_config = LLaDA2GenerationConfig(
        gen_length=32, block_length=32, steps=8, threshold=0.9, temperature=0.0,
        mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text(
        "# llada-uni demo checkpoint\n\nRANDOM WEIGHTS. Built by `examples/demo_checkpoint.py` to exercise the "
        "code path; its generations are noise.\n"
    )
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {build_demo_checkpoint(args.output, args.seed)} (random weights)")


if __name__ == "__main__":
    main()
