"""Lazy reading of a sharded safetensors checkpoint and size-bounded shard writing, shared by the converters."""

import json
import os
import re
import struct
import sys
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SAFE_WEIGHTS_NAME = "model.safetensors"


class ConversionError(Exception):
    """A problem with the input, the options or the written output; the message is meant for the user as is."""


def exit_status(call) -> int:
    """Run `call()` for a command line: 0 on success; otherwise one `error: ...` line on stderr and 1 (130 when
    interrupted), never a traceback. The callee has already removed anything half-written."""
    try:
        call()
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure still gets a one-line reason
        message = " ".join(str(exc).split())
        print(f"error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


# safetensors header dtype names -> torch dtypes.
_SAFETENSORS_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
for _name, _dtype in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _dtype):
        _SAFETENSORS_DTYPES[_name] = getattr(torch, _dtype)

# The pread path copies the stored (little-endian) bytes as they are; elsewhere safetensors' own reader converts them.
_PREAD_OK = sys.byteorder == "little" and hasattr(os, "preadv")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size) -> int:
    """`5GB` -> 5 * 10**9, `200MiB` -> 200 * 2**20, `100KB`, or a plain number of bytes (as transformers reads it)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(size).upper())
        if match is None:
            raise ConversionError(f"cannot read the size {size!r}: use e.g. 5GB, 200MB, 100KB, 2GiB or a byte count")
        value = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if value <= 0:
        raise ConversionError(f"the shard size must be positive, got {size!r}")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"` (the spelling of config.json's `dtype`)."""
    return str(dtype).removeprefix("torch.")


def nbytes(shape, dtype: torch.dtype) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * torch.empty((), dtype=dtype).element_size()


def index_name(weights_name: str) -> str:
    """`model.safetensors` -> `model.safetensors.index.json` (the transformers and diffusers convention)."""
    return weights_name + ".index.json"


class SourceCheckpoint:
    """The safetensors weights of one folder, read lazily: headers at open time, a tensor only when asked for.

    Accepts a sharded checkpoint (`model.safetensors.index.json` + shards) or a single `model.safetensors`; with
    `weights_name` (e.g. `diffusion_pytorch_model.safetensors`) that name and its index instead. The index and the
    shards must agree: every listed key must be in its shard and every shard key must be listed. With `file_name`,
    exactly that one safetensors file of the folder is read (no index).

    `safe_open` validates every file and gives the keys, shapes and dtypes. The tensor data are then read with plain
    `pread`s into freshly allocated tensors rather than through safetensors' memory map: the bytes are the same, but
    touched pages of a mapped file count in the process's resident set until the file is closed, so reading a
    checkpoint through the map would make the converter's RSS grow to the size of the whole source.
    """

    def __init__(self, folder: Path, file_name: str = None, weights_name: str = SAFE_WEIGHTS_NAME):
        self.folder = Path(folder)
        index_file = self.folder / index_name(weights_name)
        single_file = self.folder / (file_name or weights_name)
        if file_name is not None:
            if not single_file.is_file():
                raise ConversionError(f"{single_file} does not exist")
            weight_map = None
        elif index_file.is_file():
            try:
                weight_map = json.loads(index_file.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ConversionError(f"{index_file} is not a valid safetensors index ({exc})") from None
        elif single_file.is_file():
            weight_map = None
        else:
            others = sorted(p.name for pattern in ("*.bin", "*.pt") for p in self.folder.glob(pattern))
            hint = f" (found {', '.join(others[:3])}: only safetensors checkpoints are supported)" if others else ""
            raise ConversionError(f"no {index_file.name} or {weights_name} in {self.folder}{hint}")
        files = sorted(set(weight_map.values())) if weight_map is not None else [single_file.name]
        self._stack = ExitStack()
        self._handles = {}
        self._fds = {}  # file name -> OS file descriptor for the pread path
        self._offsets = {}  # key -> (absolute start, end) of its bytes in its file
        self.key_file = {}
        self.info = {}  # key -> (shape tuple, torch dtype)
        try:
            for name in files:
                path = self.folder / name
                if not path.is_file():
                    raise ConversionError(f"the index of {self.folder} lists the missing shard {name}")
                try:
                    handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
                except Exception as exc:  # safetensors raises its own error types for corrupt headers
                    raise ConversionError(f"cannot read {path}: {exc}") from None
                self._handles[name] = handle
                if _PREAD_OK:
                    self._open_for_pread(path, name)
                for key in handle.keys():
                    if key in self.key_file:
                        raise ConversionError(f"the tensor {key} is stored twice ({self.key_file[key]} and {name})")
                    tensor_slice = handle.get_slice(key)
                    dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype())
                    if dtype is None:
                        raise ConversionError(f"{key} in {name} has the unsupported dtype {tensor_slice.get_dtype()}")
                    self.key_file[key] = name
                    self.info[key] = (tuple(tensor_slice.get_shape()), dtype)
            if weight_map is not None:
                listed_missing = sorted(k for k, f in weight_map.items() if self.key_file.get(k) != f)
                unlisted = sorted(k for k in self.key_file if k not in weight_map)
                if listed_missing or unlisted:
                    raise ConversionError(
                        f"{index_file.name} and the shards of {self.folder} disagree: "
                        + "; ".join(filter(None, [
                            f"listed but not in their shard: {_short_list(listed_missing)}" if listed_missing else "",
                            f"in a shard but not listed: {_short_list(unlisted)}" if unlisted else "",
                        ]))
                    )
        except BaseException:
            self.close()
            raise

    def _open_for_pread(self, path: Path, name: str):
        """Record where each tensor's bytes lie in `path` (the header safe_open has just validated)."""
        fd = os.open(str(path), os.O_RDONLY)
        self._stack.callback(os.close, fd)
        self._fds[name] = fd
        (length,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        header = json.loads(os.pread(fd, length, 8))
        data_start = 8 + length
        for key, entry in header.items():
            if key != "__metadata__":
                begin, end = entry["data_offsets"]
                self._offsets[key] = (data_start + begin, data_start + end)

    def keys(self):
        return list(self.info)

    def get(self, key: str) -> torch.Tensor:
        """The tensor `key`, read from disk into memory of its own (never a view of a memory-mapped file)."""
        name = self.key_file[key]
        if name not in self._fds:
            return self._handles[name].get_tensor(key)
        shape, dtype = self.info[key]
        begin, end = self._offsets[key]
        data = torch.empty(end - begin, dtype=torch.uint8)
        view = memoryview(data.numpy())
        done = 0
        while done < len(view):  # a single read returns at most ~2 GiB on Linux
            count = os.preadv(self._fds[name], [view[done:]], begin + done)
            if count <= 0:
                raise ConversionError(f"{self.folder / name} ended while reading {key} (truncated file?)")
            done += count
        return data.view(dtype).reshape(shape)

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _short_list(names, limit=8):
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def raise_problems(problems, suffix: str = ""):
    """`problems` = [(what, offending names), ...]: raise one `ConversionError` listing every non-empty group."""
    found = [f"{what}: {_short_list(names)}" for what, names in problems if names]
    if found:
        raise ConversionError("; ".join(found) + suffix)


def plan_shards(sizes, max_bytes: int):
    """Split `[(name, nbytes), ...]` (in order) into shards of at most `max_bytes`; a bigger tensor gets its own."""
    shards, current, current_size = [], [], 0
    for name, size in sizes:
        if current and current_size + size > max_bytes:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shards.append(current)
    return shards


def shard_file_names(count: int, weights_name: str = SAFE_WEIGHTS_NAME):
    """`[model.safetensors]`, or `model-00001-of-0000n.safetensors`, ... (any `weights_name`, as save_pretrained)."""
    if count == 1:
        return [weights_name]
    stem = weights_name.removesuffix(".safetensors")
    return [f"{stem}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_shards(folder: Path, shards, build, total_size: int, weights_name: str = SAFE_WEIGHTS_NAME):
    """Write every shard (a list of names; `build(name)` returns the tensor) and, when there are several, the index.

    Only one shard's tensors are alive at a time. Returns the written file names.
    """
    names = shard_file_names(len(shards), weights_name)
    weight_map = {}
    for file_name, keys in zip(names, shards):
        tensors = {key: build(key) for key in keys}
        save_file(tensors, str(Path(folder) / file_name), metadata={"format": "pt"})
        del tensors
        weight_map.update({key: file_name for key in keys})
    if len(names) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (Path(folder) / index_name(weights_name)).write_text(json.dumps(index, indent=2) + "\n")
    return names


def check_written(folder: Path, expected, max_bytes: int, weights_name: str = SAFE_WEIGHTS_NAME):
    """Re-read the headers of the weights in `folder` and compare them with `expected` {name: (shape, dtype)}.

    Checks the index against the shards, the key set, every shape and dtype and the shard size bound.
    Raises `ConversionError` listing the offenders.
    """
    with SourceCheckpoint(folder, weights_name=weights_name) as written:
        problems = []
        missing = sorted(set(expected) - set(written.info))
        extra = sorted(set(written.info) - set(expected))
        if missing:
            problems.append(f"missing tensors: {_short_list(missing)}")
        if extra:
            problems.append(f"unexpected tensors: {_short_list(extra)}")
        for key in sorted(set(expected) & set(written.info)):
            if written.info[key] != tuple(expected[key]):
                want, got = expected[key], written.info[key]
                problems.append(f"{key} is {list(got[0])} {dtype_name(got[1])}, expected {list(want[0])} "
                                f"{dtype_name(want[1])}")
        per_file = {}
        for key, file_name in written.key_file.items():
            count, size = per_file.get(file_name, (0, 0))
            per_file[file_name] = (count + 1, size + nbytes(*written.info[key]))
        for file_name, (count, size) in sorted(per_file.items()):
            if count > 1 and size > max_bytes:
                problems.append(f"{file_name} holds {size} bytes of tensors, more than the {max_bytes} allowed")
        index_file = Path(folder) / index_name(weights_name)
        if index_file.is_file():
            total = json.loads(index_file.read_text()).get("metadata", {}).get("total_size")
            actual = sum(size for _, size in per_file.values())
            if total != actual:
                problems.append(f"the index says total_size {total}, the shards hold {actual} bytes")
    if problems:
        raise ConversionError("the written checkpoint failed verification: " + "; ".join(problems[:10]))
    return per_file
