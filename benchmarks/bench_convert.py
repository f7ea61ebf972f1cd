"""Conversion benchmark: does `conversion/convert_llada2_uni_to_hf.py` stream (peak memory ~ one output shard)?

1. Generates, in a temporary folder, a synthetic LLaDA2.0-Uni snapshot in the ORIGINAL layout: a LLaDA2 MoE root
   (per-expert `model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`, float32 `mlp.gate.expert_bias`, ...) in
   several `model-0000i-of-0000n.safetensors` shards + index, the parity checkpoint's tokenizer files and
   `image_tokenizer/` (with its `sigvq_embedding.pt`), a Z-Image `decoder/` (sharded too) and the parity `vae/`. The
   LLM's layer count and the decoder's depth are chosen so that the weights reach `--size-gb` (about 90% LLM, 10%
   decoder). Weights are bf16 (random), as in the release. The generator holds at most one source shard at a time.
2. Measures the peak RSS of a child Python that only imports the converter and everything it imports (torch,
   transformers, diffusers, tokenizers, this package's classes) and exits: the BASELINE.
3. Runs the real command line (`conversion/convert_llada2_uni_to_hf.py`, `--max-shard-size`, default 500MB) in a
   child process and measures its peak RSS (VmHWM, the kernel's high-water mark of the resident set, which counts
   anonymous memory AND the touched pages of memory-mapped files; the child writes it at exit), the peaks of RssAnon
   / RssFile sampled from /proc/<pid>/status, wall time, bytes written and the largest output shard.

The last line is `peak_rss_over_shard=<ratio>` with

    ratio = (peak RSS of the conversion - peak RSS of the import-only baseline) / size of the largest output shard

i.e. how many output shards' worth of memory the conversion itself needs above the fixed cost of the libraries.
A streaming converter holds one output shard (plus one source tensor), so the goal is <= 1.5.

    python benchmarks/bench_convert.py               # ~3 GB snapshot, 500MB output shards (~1.5 minutes)
    python benchmarks/bench_convert.py --quick       # ~200 MB, 50MB shards: a smoke test (~25 s)
    python benchmarks/bench_convert.py --size-gb 8 --max-shard-size 1GB --keep --workdir /big/disk
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# The tiny original-layout checkpoint committed with the tests: its tokenizer, image tokenizer and VAE are copied in.
PARITY_CHECKPOINT = REPO_ROOT / "tests" / "data" / "parity" / "checkpoint"
CONVERTER = REPO_ROOT / "conversion" / "convert_llada2_uni_to_hf.py"
ROOT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Shapes of the synthetic models. The LLM keeps the parity vocabulary (576 = 512 text + 64 image codes, matching the
# copied tokenizer and image tokenizer) and gets its size from wide experts and many layers; the decoder keeps the
# parity SigVQ width (cap_feat_dim 32) and VAE latent (16 channels).
PRESETS = {
    "default": dict(
        size_gb=3.0, max_shard_size="500MB", source_shard_mb=700,
        llm=dict(hidden_size=1024, num_attention_heads=8, num_key_value_heads=4, head_dim=128,
                 intermediate_size=2816, moe_intermediate_size=512, num_experts=64, num_experts_per_tok=8),
        decoder=dict(dim=1024, n_heads=8, n_kv_heads=8, axes_dims=[32, 48, 48], n_refiner_layers=1),
    ),
    "quick": dict(
        size_gb=0.2, max_shard_size="50MB", source_shard_mb=40,
        llm=dict(hidden_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                 intermediate_size=1408, moe_intermediate_size=256, num_experts=32, num_experts_per_tok=4),
        decoder=dict(dim=512, n_heads=4, n_kv_heads=4, axes_dims=[32, 48, 48], n_refiner_layers=1),
    ),
}
DECODER_SHARE = 0.1  # of --size-gb, unless --no-pixel
BF16_BYTES = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~200 MB snapshot and 50MB shards: a smoke test")
    parser.add_argument("--size-gb", type=float, default=None, help="weights of the synthetic snapshot, in GB "
                        "(10**9 bytes; default 3, --quick 0.2)")
    parser.add_argument("--max-shard-size", default=None, help="passed to the converter (default 500MB, --quick 50MB)")
    parser.add_argument("--source-shard-mb", type=int, default=None,
                        help="size of the generated source shards (default 700, --quick 40)")
    parser.add_argument("--no-pixel", action="store_true",
                        help="the root alone (LLM + image tokenizer): no decoder/, vae/ or sigvq_embedding.pt")
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the snapshot and the converted folder")
    parser.add_argument("--poll-interval", type=float, default=0.02, help="seconds between /proc samples")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# The synthetic snapshot
# ---------------------------------------------------------------------------------------------------------------

def _llm_config(preset: dict, num_layers: int) -> dict:
    config = json.loads((PARITY_CHECKPOINT / "config.json").read_text())
    config.update(preset["llm"])
    config.update(num_hidden_layers=num_layers, first_k_dense_replace=1, torch_dtype="bfloat16")
    return config


def _llm_layout(config_dict: dict):
    """[(original key, shape, dtype), ...] of an original checkpoint for this config, in layer order: the meta
    model's state dict with every fused expert tensor split back into the per-expert matrices of the release."""
    import torch

    from transformers_llada_uni import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

    config = LLaDA2MoeConfig.from_dict(config_dict)
    with torch.device("meta"):
        model = LLaDA2MoeForCausalLM(config)
    layout = []
    for name, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith(".mlp.experts.gate_up_proj"):
            prefix, (experts, two_inter, hidden) = name.removesuffix(".gate_up_proj"), shape
            for expert in range(experts):
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    proj_shape = (hidden, two_inter // 2) if proj == "down_proj" else (two_inter // 2, hidden)
                    layout.append((f"{prefix}.{expert}.{proj}.weight", proj_shape, torch.bfloat16))
        elif name.endswith(".mlp.experts.down_proj"):
            continue  # emitted with gate/up above, expert by expert as in the release's shards
        elif name.endswith(".mlp.gate.expert_bias"):
            layout.append((name, shape, torch.float32))  # always float32 in the release
        else:
            layout.append((name, shape, torch.bfloat16))
    return layout


def _decoder_config(preset: dict, num_layers: int) -> dict:
    config = json.loads((PARITY_CHECKPOINT / "decoder" / "config.json").read_text())
    config.update(preset["decoder"])
    config["n_layers"] = num_layers
    return config


def _decoder_layout(config: dict):
    """[(original key, shape, dtype), ...] of an original Z-Image decoder (`cap_embedder.*` named
    `semantic_embedder.*`, as in the release)."""
    import torch
    from diffusers import ZImageTransformer2DModel

    kwargs = {key: value for key, value in config.items() if not key.startswith("_")}
    with torch.device("meta"):
        model = ZImageTransformer2DModel(**kwargs)
    layout = []
    for name, tensor in model.state_dict().items():
        if name.startswith("cap_embedder."):
            name = "semantic_embedder." + name[len("cap_embedder."):]
        layout.append((name, tuple(tensor.shape), torch.bfloat16))
    return layout


def _layout_bytes(layout) -> int:
    import torch

    total = 0
    for _, shape, dtype in layout:
        count = 1
        for dim in shape:
            count *= dim
        total += count * torch.empty((), dtype=dtype).element_size()
    return total


def _fit_depth(make_layout, target_bytes: int, minimum: int) -> int:
    """The depth whose layout comes closest to `target_bytes` (layouts grow linearly with depth)."""
    base, plus_one = _layout_bytes(make_layout(minimum)), _layout_bytes(make_layout(minimum + 1))
    per_layer = plus_one - base
    return max(minimum, minimum + round((target_bytes - base) / per_layer))


def _write_sharded(folder: Path, layout, shard_bytes: int, weights_name: str, seed: int) -> int:
    """Write random tensors for `layout` as `<stem>-0000i-of-0000n.safetensors` + index, one shard in memory at a
    time; returns the bytes of tensor data written."""
    import torch
    from safetensors.torch import save_file

    from conversion.checkpoint_io import plan_shards

    planned = plan_shards([(index, _layout_bytes([entry])) for index, entry in enumerate(layout)], shard_bytes)
    shards = [[layout[index] for index in shard] for shard in planned]
    stem = weights_name.removesuffix(".safetensors")
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for number, entries in enumerate(shards, start=1):
        file_name = f"{stem}-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for key, shape, dtype in entries:
            tensors[key] = torch.empty(shape, dtype=dtype).uniform_(-0.05, 0.05, generator=generator)
            weight_map[key] = file_name
        save_file(tensors, str(folder / file_name), metadata={"format": "pt"})
        total += _layout_bytes(entries)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{weights_name}.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def make_snapshot(folder: Path, preset: dict, size_bytes: int, source_shard_bytes: int, pixel: bool) -> dict:
    """Write the synthetic original snapshot into the empty `folder`; returns a description of it."""
    folder.mkdir(parents=True)
    decoder_bytes = int(size_bytes * DECODER_SHARE) if pixel else 0
    num_layers = _fit_depth(lambda n: _llm_layout(_llm_config(preset, n)), size_bytes - decoder_bytes, 2)
    config = _llm_config(preset, num_layers)
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    for name in ROOT_FILES:
        shutil.copyfile(PARITY_CHECKPOINT / name, folder / name)
    image_tokenizer = PARITY_CHECKPOINT / "image_tokenizer"
    shutil.copytree(image_tokenizer, folder / "image_tokenizer",
                    ignore=None if pixel else shutil.ignore_patterns("sigvq_embedding.pt"))
    layout = _llm_layout(config)
    info = {"llm_layers": num_layers, "llm_tensors": len(layout),
            "llm_bytes": _write_sharded(folder, layout, source_shard_bytes, "model.safetensors", seed=0),
            "decoder_bytes": 0}
    info["llm_source_shards"] = len(list(folder.glob("model-*.safetensors")))
    if pixel:
        depth = _fit_depth(lambda n: _decoder_layout(_decoder_config(preset, n)), decoder_bytes, 1)
        decoder_config = _decoder_config(preset, depth)
        (folder / "decoder").mkdir()
        (folder / "decoder" / "config.json").write_text(json.dumps(decoder_config, indent=1) + "\n")
        info["decoder_layers"] = depth
        info["decoder_bytes"] = _write_sharded(folder / "decoder", _decoder_layout(decoder_config),
                                               source_shard_bytes, "model.safetensors", seed=1)
        shutil.copytree(PARITY_CHECKPOINT / "vae", folder / "vae")
    info["source_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return info


# ---------------------------------------------------------------------------------------------------------------
# Measuring a child process
# ---------------------------------------------------------------------------------------------------------------

_STATUS_FIELDS = ("VmHWM", "RssAnon", "RssFile")

# What the converter imports, eagerly or inside its functions: the baseline child imports exactly this and exits.
BASELINE_CODE = """
import sys
sys.path.insert(0, {repo!r})
import torch, transformers, diffusers, tokenizers, safetensors.torch
from transformers import PreTrainedTokenizerFast
from transformers.dynamic_module_utils import custom_object_save
from diffusers import AutoencoderKL, ZImageTransformer2DModel
import conversion.convert_llada2_uni_to_hf
from transformers_llada_uni import (LLaDA2GenerationConfig, LLaDA2MoeConfig, LLaDA2MoeForCausalLM, LLaDA2UniConfig,
    LLaDA2UniForConditionalGeneration, LLaDA2UniImageProcessor, LLaDA2UniProcessor)
from diffusers_llada_uni.semantic_embedder import LLaDA2UniSemanticEmbedder
from diffusers_llada_uni.scheduling_llada2_uni import LLaDA2UniFlowMatchEulerScheduler
from diffusers_llada_uni.hub_layout import DECODERS, SUBFOLDERS, default_scheduler, write_model_index
"""

# Runs a script as `python script.py args...` would (runpy, `__main__`) and, at exit, writes the process's VmHWM
# (bytes) to a file. `ru_maxrss` from wait4 / RUSAGE_CHILDREN cannot be used: at exec the kernel folds the
# high-water mark of the address space being replaced (the forked or vforked copy of THIS process, which holds the
# generator's tensors) into the child's maxrss, so it would measure the benchmark, not the converter.
WRAPPER_CODE = """
import atexit, runpy, sys
report, script = sys.argv[1], sys.argv[2]
def _report():
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    with open(report, "w") as out:
        out.write(str(int(hwm.split()[1]) * 1024))
atexit.register(_report)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def _read_status(pid: int) -> dict:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in _STATUS_FIELDS:
                    values[name] = int(rest.split()[0]) * 1024  # kB
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return values


def run_measured(script: Path, script_args, workdir: Path, poll_interval: float, env: dict) -> dict:
    """Run `python script script_args...`, sampling /proc/<pid>/status; returns wall time, exit status, output and
    memory peaks in bytes.

    `peak_rss` is the child's VmHWM, the kernel's high-water mark of its resident set (anonymous + file-backed +
    shared pages) since its exec, written by the child itself at exit (and never below the last sampled value);
    `peak_anon` / `peak_file` are the largest sampled RssAnon / RssFile (sampled, so a short spike can be missed).
    """
    report = workdir / f".vmhwm-{script.stem}"
    report.unlink(missing_ok=True)
    out_file = tempfile.TemporaryFile()
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", WRAPPER_CODE, str(report), str(script), *script_args],
                               stdout=out_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    peaks = {name: 0 for name in _STATUS_FIELDS}
    done = threading.Event()

    def poll():
        while not done.is_set():
            for name, value in _read_status(process.pid).items():
                peaks[name] = max(peaks[name], value)
            done.wait(poll_interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    returncode = process.wait()
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    out_file.seek(0)
    output = out_file.read().decode(errors="replace")
    out_file.close()
    reported = int(report.read_text()) if report.is_file() else 0
    report.unlink(missing_ok=True)
    return {"returncode": returncode, "wall": wall, "output": output, "peak_rss": max(reported, peaks["VmHWM"]),
            "peak_anon": peaks["RssAnon"], "peak_file": peaks["RssFile"]}


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), str(REPO_ROOT / "src"),
                                                      env.get("PYTHONPATH")]))
    return env


def _written_files(folder: Path):
    files = [p for p in folder.rglob("*") if p.is_file()]
    shards = [p for p in files if p.name.endswith(".safetensors")]
    return files, shards


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def main(argv=None) -> int:
    args = parse_args(argv)
    if not PARITY_CHECKPOINT.is_dir():
        print(f"error: {PARITY_CHECKPOINT} (tokenizer, image tokenizer and VAE to copy) not found", file=sys.stderr)
        return 1
    preset = PRESETS["quick" if args.quick else "default"]
    size_bytes = int((args.size_gb if args.size_gb is not None else preset["size_gb"]) * 1e9)
    max_shard_size = args.max_shard_size or preset["max_shard_size"]
    source_shard_bytes = (args.source_shard_mb or preset["source_shard_mb"]) * 10**6
    workdir = Path(tempfile.mkdtemp(prefix="bench_convert-", dir=args.workdir))
    try:
        started = time.perf_counter()
        info = make_snapshot(workdir / "original", preset, size_bytes, source_shard_bytes, pixel=not args.no_pixel)
        generate_s = time.perf_counter() - started
        print(f"snapshot: {_mb(info['source_bytes'])} in {workdir / 'original'} ({info['llm_layers']} layers, "
              f"{info['llm_tensors']} LLM tensors in {info['llm_source_shards']} shards, LLM {_mb(info['llm_bytes'])}, "
              f"decoder {_mb(info['decoder_bytes'])}; generated in {generate_s:.1f} s)", flush=True)

        env = _child_env()
        baseline_script = workdir / "import_only.py"
        baseline_script.write_text(BASELINE_CODE.format(repo=str(REPO_ROOT)))
        baseline = run_measured(baseline_script, [], workdir, args.poll_interval, env)
        if baseline["returncode"] != 0:
            print(baseline["output"], file=sys.stderr)
            print("error: the import-only baseline child failed", file=sys.stderr)
            return 1

        output = workdir / "converted"
        run = run_measured(CONVERTER, ["--original", str(workdir / "original"), "--output", str(output),
                                       "--max-shard-size", max_shard_size], workdir, args.poll_interval, env)
        if run["returncode"] != 0:
            print(run["output"], file=sys.stderr)
            print(f"error: the conversion failed (exit status {run['returncode']})", file=sys.stderr)
            return 1
        files, shards = _written_files(output)
        written = sum(p.stat().st_size for p in files)
        largest = max(shards, key=lambda p: p.stat().st_size)
        largest_bytes = largest.stat().st_size
        above = run["peak_rss"] - baseline["peak_rss"]
        ratio = above / largest_bytes
        convert_s = run["wall"] - baseline["wall"]

        rows = [
            ("source snapshot", f"{_mb(info['source_bytes'])} ({info['llm_source_shards']} LLM shards of "
                                f"<= {_mb(source_shard_bytes)})"),
            ("--max-shard-size", max_shard_size),
            ("written", f"{_mb(written)} in {len(shards)} safetensors files ({len(files)} files)"),
            ("largest output shard", f"{_mb(largest_bytes)} ({largest.relative_to(output)})"),
            ("baseline peak RSS (imports only)", f"{_mb(baseline['peak_rss'])} ({baseline['wall']:.1f} s)"),
            ("  sampled peak RssAnon / RssFile", f"{_mb(baseline['peak_anon'])} / {_mb(baseline['peak_file'])}"),
            ("conversion peak RSS", _mb(run["peak_rss"])),
            ("  sampled peak RssAnon / RssFile", f"{_mb(run['peak_anon'])} / {_mb(run['peak_file'])}"),
            ("conversion peak RSS - baseline", _mb(above)),
            ("wall time", f"{run['wall']:.1f} s (minus the baseline's import time: {convert_s:.1f} s)"),
            ("throughput", f"{written / 1e6 / run['wall']:.1f} MB/s (excluding imports: "
                           f"{written / 1e6 / max(convert_s, 1e-9):.1f} MB/s)"),
        ]
        width = max(len(name) for name, _ in rows)
        print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
        print(f"goal: peak RSS above the import baseline <= 1.5 x the largest output shard: "
              f"{'met' if ratio <= 1.5 else 'NOT met'}")
        print(f"peak_rss_over_shard={ratio:.3f}")
        return 0
    finally:
        if args.keep:
            print(f"kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
