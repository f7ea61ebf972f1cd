"""The model card (`README.md` with Hub metadata) written beside every converted or saved LLaDA2.0-Uni folder.

The metadata says which library loads the repo and what it does; the snippets are the two ways in (diffusers'
pipeline and transformers' Auto classes), both with `trust_remote_code=True`, so they work without this package.
"""

import os
from pathlib import Path
from typing import Iterable, Optional

TAGS = ("llada2", "masked-diffusion", "discrete-diffusion", "text-to-image", "image-to-text", "image-editing",
        "diffusers", "custom_code")


def _yaml_list(name: str, values: Iterable[str]) -> list:
    values = list(dict.fromkeys(values))
    return [f"{name}:"] + [f"- {value}" for value in values] if values else []


def model_card(repo: str, *, base_model: Optional[str] = None, license: Optional[str] = None,
               tags: Iterable[str] = (), title: Optional[str] = None, note: Optional[str] = None,
               kind: str = "uni", prompt: str = "a red fox in snow", question: str = "What is in the picture?",
               instruction: str = "make it night") -> str:
    """The card text; `repo` is the id (or path) the snippets load from. `kind`: "uni" (the composite with its
    pixel side) or "llm" (a text-only LLaDA2 MoE); `prompt` / `question` / `instruction` fill the snippets."""
    if kind == "llm":
        return _llm_card(repo, base_model=base_model, license=license, tags=tags, title=title or "LLaDA2.0")
    title = title or "LLaDA2.0-Uni"
    header = ["---", "library_name: transformers", "pipeline_tag: any-to-any"]
    if license:
        header.append(f"license: {license}")
    if base_model:
        header.append(f"base_model: {base_model}")
    header += _yaml_list("tags", [*TAGS, *tags])
    header.append("---")
    body = f'''
# {title}

LLaDA2.0-Uni in the Hugging Face layout: one folder that transformers and diffusers both load, each weight stored
once. The root holds the masked-diffusion LLM with its SigLIP-VQ image tokenizer (transformers remote code); the
pixel decoder, turbo decoder, VAE and samplers sit in diffusers subfolders.{(" " + note) if note else ""}

## Draw, answer and edit (diffusers)

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)
image = pipe("{prompt}").images[0]
answer = pipe(image=image, question="{question}").text[0]
edited = pipe(image=image, instruction="{instruction}").images[0]
```

## Tokens in, tokens out (transformers)

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)
ids = model.generate(**processor(text="{question}", images=image))
print(processor.decode(ids[0], skip_special_tokens=True))
```

Every sampling setting (block length, steps, threshold, guidance scales, image size) is in `generation_config.json`;
keyword arguments of `generate()` and of the pipeline override single fields.
'''
    return "\n".join(header) + "\n" + body


def _llm_card(repo, *, base_model, license, tags, title) -> str:
    header = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    header += [f"license: {license}"] if license else []
    header += [f"base_model: {base_model}"] if base_model else []
    header += _yaml_list("tags", ["llada2", "masked-diffusion", "discrete-diffusion", "moe", "custom_code", *tags])
    header.append("---")
    body = f'''
# {title}

A LLaDA2.0 masked-diffusion MoE language model in the Hugging Face layout (transformers remote code).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")
model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)
prompt = "<role>HUMAN</role>What is a diffusion language model?<role>ASSISTANT</role>"
ids = model.generate(tokenizer(prompt, return_tensors="pt").input_ids, max_new_tokens=256)
print(tokenizer.decode(ids[0], skip_special_tokens=True))
```

Every sampling setting is in `generation_config.json`; keyword arguments of `generate()` override single fields.
'''
    return "\n".join(header) + "\n" + body


def write_model_card(folder, repo: Optional[str] = None, *, overwrite: bool = False, **fields) -> Path:
    """Write `README.md` into `folder` (kept if one exists, unless `overwrite`); `repo` defaults to the folder path."""
    path = Path(folder) / "README.md"
    if path.exists() and not overwrite:
        return path
    text = model_card(repo or str(folder), **fields)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def card_metadata(readme) -> dict:
    """`license`, `tags` and `base_model` from a source card's front matter (simple YAML: `key: value` / `- item`),
    so a converted folder carries them over."""
    path = Path(readme)
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    found, key = {}, None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        if line.startswith(("- ", "  - ")) and key == "tags":
            found.setdefault("tags", []).append(line.split("-", 1)[1].strip())
            continue
        name, _, value = line.partition(":")
        key = name.strip()
        if key in ("license", "base_model") and value.strip():
            found[key] = value.strip().strip("'\"")
        elif key == "tags" and value.strip().startswith("["):
            found["tags"] = [tag.strip().strip("'\"") for tag in value.strip()[1:-1].split(",") if tag.strip()]
    return found


__all__ = ["card_metadata", "model_card", "write_model_card"]
