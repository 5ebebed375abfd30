"""Checkpoint files: atomic, versioned, checksummed.

File layout: ``MAGIC`` (8 bytes) | payload length (8 bytes, little endian) | SHA-256 of the
payload (32 bytes) | payload (``torch.save`` of the state dict: tensors, ints, floats,
strings, nested dicts, loadable with ``weights_only=True``).

``save_atomic`` writes to a temporary file in the same folder, flushes and fsyncs it, then
renames it over the target (and fsyncs the folder): a crash or kill at any moment leaves
either the previous checkpoint or the new one, never a torn file. ``load_checked`` verifies
magic, length and checksum before unpickling anything, so a truncated or corrupt file is a
clear ``ValueError``.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile

import torch

MAGIC = b"GPURPLY1"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sQ32s")


def save_atomic(state: dict, path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    head = _HEAD.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - folders that cannot be opened (some platforms)
        pass


def load_checked(path) -> dict:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"checkpoint {path!r}: cannot read it ({e})") from e
    if len(raw) < _HEAD.size:
        raise ValueError(f"checkpoint {path!r}: truncated ({len(raw)} bytes, shorter than the header)")
    magic, length, digest = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise ValueError(f"checkpoint {path!r}: not a gpu_replay checkpoint (magic {magic!r}, expected {MAGIC!r})")
    payload = memoryview(raw)[_HEAD.size:]
    if len(payload) != length:
        raise ValueError(f"checkpoint {path!r}: truncated or padded: payload is {len(payload)} bytes, "
                         f"the header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"checkpoint {path!r}: corrupt (SHA-256 of the payload does not match)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise ValueError(f"checkpoint {path!r}: unreadable payload ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r}: expected a state dict, got {type(state).__name__}")
    return state


def spec_to_state(spec: dict) -> dict:
    return {name: [list(shape), str(dtype).replace("torch.", "")] for name, (shape, dtype) in spec.items()}


def expect(cond: bool, what: str, want, got) -> None:
    if not cond:
        raise ValueError(f"load_state_dict: {what}: this buffer has {want!r}, the checkpoint has {got!r}")


def counts(sd: dict, what: str) -> tuple[int, int]:
    """(num_added, added) from a state dict: ints with 0 <= num_added <= added."""
    num_added, added = sd.get("num_added"), sd.get("added")
    if not isinstance(num_added, int) or not isinstance(added, int) or not 0 <= num_added <= added:
        raise ValueError(f"load_state_dict: {what}num_added/added: expected ints 0 <= num_added <= added, "
                         f"got {num_added!r}, {added!r}")
    return num_added, added


def tensor_like(sd: dict, key: str, shape, dtype) -> torch.Tensor:
    v = sd.get(key)
    if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(shape) or v.dtype != dtype:
        got = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"load_state_dict: {key}: expected {dtype} {list(shape)}, got {got}")
    return v
