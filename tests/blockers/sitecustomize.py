"""Imported at interpreter start when this folder is on PYTHONPATH: makes the packages named
in GPU_REPLAY_BLOCK (comma-separated) fail to import, as on a machine without them."""
import os
import sys

_BLOCK = tuple(m for m in os.environ.get("GPU_REPLAY_BLOCK", "").split(",") if m)


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: GPU_REPLAY_BLOCK)", name=name)
        return None


if _BLOCK:
    sys.meta_path.insert(0, _Blocker())
