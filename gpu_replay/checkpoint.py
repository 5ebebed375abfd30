"""Checkpoint files: atomic, versioned, checksummed.

File layout: ``MAGIC`` (8 bytes) | payload length (8 bytes, little endian) | SHA-256 of the
payload (32 bytes) | payload (``torch.save`` of the state dict: tensors, ints, floats,
strings, nested dicts, loadable with ``weights_only=True``).

``save_atomic`` writes a temporary file in the target's folder (created with mode 0666 less
the umask, like any new file), flushes and fsyncs it, renames it over the target and fsyncs
the folder: a crash or kill at any moment leaves the previous checkpoint or the new one,
never a torn file. A symlink is written through (its target is replaced, the link stays);
a target that exists and is not a regular file (a folder, FIFO, device, socket) is refused.
``load_checked`` reads the header first, compares the length with the file's size, then
reads and verifies the payload before unpickling anything: a truncated, padded, corrupt or
foreign file is a clear ``ValueError`` (and a huge foreign file is never read into memory).
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import struct

import torch

MAGIC = b"GPURPLY1"
FORMAT_VERSION = 2
_HEAD = struct.Struct("<8sQ32s")


def _target(path) -> str:
    """The regular file to replace: symlinks followed; other kinds of file refused."""
    path = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"save: path {path!r}: expected a regular file (or a new name), got "
                         f"{'a folder' if stat.S_ISDIR(st.st_mode) else 'a special file'}")
    return path


def save_atomic(state: dict, path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    head = _HEAD.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
    path = _target(path)
    folder = os.path.dirname(path)
    for attempt in range(100):  # a fresh temporary name beside the target
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise OSError(f"save: could not create a temporary file in {folder!r}")
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
        f = open(path, "rb")
    except OSError as e:
        raise ValueError(f"checkpoint {path!r}: cannot read it ({e})") from e
    with f:
        size = os.fstat(f.fileno()).st_size if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise ValueError(f"checkpoint {path!r}: truncated ({len(head)} bytes, shorter than the header)")
        magic, length, digest = _HEAD.unpack(head)
        if magic != MAGIC:
            raise ValueError(f"checkpoint {path!r}: expected a gpu_replay checkpoint (magic {MAGIC!r}), "
                             f"got magic {magic!r}")
        if size is not None and size - _HEAD.size != length:
            raise ValueError(f"checkpoint {path!r}: truncated or padded: the header says {length} payload "
                             f"bytes, the file has {size - _HEAD.size}")
        payload = f.read(length + 1)
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
