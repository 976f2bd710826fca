"""Saving and loading without half-written files.

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over the
target: a rename within one file system is atomic, so a crash leaves the old file or the new one, never
a truncated mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minitune.errors import CheckpointError
from minitune.model import GPT, GPTConfig

WEIGHTS = "model.safetensors"
META = "config.json"
RESUME = "resume.pt"  # everything needed to continue a run exactly (weights_only-loadable)
RESUME_META = "resume.json"  # its step, settings and checksum, readable without torch


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) for a temporary file beside path, fsync it, then rename it to path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (not possible on every platform, so best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to path atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj) -> None:
    """Write obj as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically (tied or non-contiguous tensors are copied first)."""
    plain = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, tmp, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU, with a CheckpointError naming the file if it is unreadable."""
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights from {path}: {e}") from e


def read_json(path: str | Path) -> dict:
    """Read a JSON object, with a CheckpointError naming the file if it is missing or malformed."""
    try:
        obj = json.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(obj).__name__}")
    return obj


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str | None) -> None:
    """Refuse a file whose SHA-256 is not the one recorded when it was written."""
    if expected is not None and sha256_file(path) != expected:
        raise CheckpointError(f"{path} does not match the checksum recorded when it was saved: the file is "
                              "corrupted or was replaced")


def save_model(model: GPT, directory: str | Path, **meta) -> None:
    """Write a run folder: weights (safetensors) and config.json (model config, checksum, plus `meta`)."""
    directory = Path(directory)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    save_tensors(directory / WEIGHTS, state)
    atomic_write_json(directory / META, {"model": model.config.to_dict(), "sha256": sha256_file(directory / WEIGHTS),
                                         **meta})


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Read a run folder written by save_model; returns the model (in eval mode) and its metadata."""
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"{directory} is not a minitune run folder: it needs {META} and {WEIGHTS}")
    meta = read_json(directory / META)
    try:
        config = GPTConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / META} holds no valid model config: {e}") from e
    verify_checksum(directory / WEIGHTS, meta.get("sha256"))
    model = GPT(config)
    state = load_tensors(directory / WEIGHTS)
    state["lm_head.weight"] = state.get("transformer.wte.weight")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k] is not None and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{directory / WEIGHTS} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}"
        )
    model.load_state_dict(state)
    return model.to(device).eval(), meta


# --- resume state ---------------------------------------------------------------------------------------

def rng_state() -> dict:
    """Every random generator's state, in plain types and tensors (so weights_only loading can read it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(directory: str | Path, state: dict, info: dict) -> Path:
    """Write the resume state (tensors, numbers, lists only) atomically, and its step and checksum beside it."""
    directory = Path(directory)
    atomic_write(directory / RESUME, lambda tmp: torch.save(state, tmp))
    atomic_write_json(directory / RESUME_META, {**info, "sha256": sha256_file(directory / RESUME)})
    return directory / RESUME


def load_resume(directory: str | Path) -> tuple[dict, dict] | None:
    """(state, info) saved by save_resume, checked; None if the folder holds no resume state."""
    directory = Path(directory)
    if not (directory / RESUME).is_file():
        return None
    info = read_json(directory / RESUME_META)
    verify_checksum(directory / RESUME, info.get("sha256"))
    return safe_torch_load(directory / RESUME), info


def safe_torch_load(path: str | Path):
    """torch.load that only accepts tensors and plain containers: a pickle holding code is refused, unrun."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds more than tensors and plain values, so it was refused "
                              f"(none of its code was run): {str(e).splitlines()[0]}") from e
    except Exception as e:  # torch's unpickler fails in many ways on garbage: each means "not a checkpoint"
        raise CheckpointError(f"cannot read {path}: it is truncated or not a torch file ({type(e).__name__}: {e})") from e
