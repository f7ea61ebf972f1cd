"""Generate text with block-masked diffusion through the plain transformers Auto classes.

Without --model it first builds ./demo-checkpoint, a tiny model with RANDOM weights, so the command works offline on
any machine; point --model at a converted LLaDA2 / LLaDA2.0-Uni folder for real output.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="converted checkpoint folder (default: demo)")
    parser.add_argument("--prompt", default="<role>HUMAN</role> tell a story about a red fox in snow <role>ASSISTANT</role>")
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--no-cache", action="store_true", help="re-run the whole prefix every step (slow)")
    args = parser.parse_args()

    folder = args.model
    if folder is None:
        folder = Path("demo-checkpoint")
        if not (folder / "config.json").exists():
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from demo_checkpoint import build_demo_checkpoint

            build_demo_checkpoint(folder)
        print("NOTE: demo-checkpoint has RANDOM weights; the text below is noise.\n")
    elif not (folder / "config.json").exists():
        parser.error(f"--model {folder}: no config.json there (expected a converted checkpoint folder)")

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    print(f"prompt: {args.prompt}\noutput: ", end="", flush=True)
    start = time.perf_counter()
    out = model.generate(
        input_ids,
        gen_length=args.gen_length,
        steps=args.steps,
        threshold=args.threshold,
        use_block_cache=not args.no_cache,
        streamer=TextStreamer(tokenizer, skip_prompt=True),
        return_dict_in_generate=True,
    )
    seconds = time.perf_counter() - start
    new_tokens = out.sequences.shape[1] - input_ids.shape[1]
    print(f"\n[{new_tokens} tokens, {out.num_forward_passes} forward passes, {seconds:.2f} s]")


if __name__ == "__main__":
    main()
