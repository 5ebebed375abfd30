"""Frame stacks rebuilt from per-env streams of single frames (``gpu_replay.frames``), gathered
for a sampled batch in one launch.

For output row r = i * S + j (i < 2B: the obs of row slots[i], then the next_obs of row
slots[i - B]; j: stack slot, 0 = oldest) with ref = e << 48 | q << 8 | d read from the stored
reference fields at the slot:

    lag = S - 1 - j
    src = e * F + (q - min(lag, d)) % F     if reset padding is consistent (pad[1]) or lag <= d
          PAD                               otherwise (the fixed padding frame)
    out[r] = frames[src]                    (whole words, W per frame)

``stacks_torch`` is the twin (the torch path and the reference); ``stacks_triton`` does the
reference reads, the index math and the copy in one launch (no host sync).
"""
from __future__ import annotations

import torch

from ._jit import launched, tl, triton
from .rows import _block

E_SHIFT, P_SHIFT = 48, 8
P_MASK, D_MASK = (1 << 40) - 1, (1 << 8) - 1


def stack_index_torch(refs: torch.Tensor, base: torch.Tensor, lag: torch.Tensor, reset_ok: torch.Tensor,
                      F: int, pad_row: int) -> torch.Tensor:
    """Frame rows [R * S] of the stacks of ``refs`` [R] (fixed-shape ops, no sync)."""
    e = refs >> E_SHIFT
    p = (refs >> P_SHIFT) & P_MASK
    d = (refs & D_MASK)[:, None]
    lag = lag[None, :]
    idx = base.index_select(0, e)[:, None] + torch.remainder(p[:, None] - torch.minimum(lag, d), F)
    return torch.where(reset_ok | (lag <= d), idx, pad_row).reshape(-1)


def stacks_torch(frames_w, ref_obs, ref_next, slots, base, lag, reset_ok, F: int, pad_row: int, out) -> None:
    """out [2B * S, W] = the obs then next_obs stacks of the rows at ``slots``."""
    refs = torch.cat((ref_obs.index_select(0, slots), ref_next.index_select(0, slots)))
    torch.index_select(frames_w, 0, stack_index_torch(refs, base, lag, reset_ok, F, pad_row), out=out)


if triton is not None:
    from .rows import _copy_field

    @triton.jit
    def _stacks_kernel(src, dst, W, ref_obs, ref_next, slots, pad, B, F, PAD,
                       S: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        j = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK).to(tl.int64)
        ok = r < 2 * B * S
        i = r // S
        k = r % S
        nxt = i >= B
        b = tl.where(nxt, i - B, i)
        slot = tl.load(slots + b, mask=ok, other=0)
        ref = tl.where(nxt, tl.load(ref_next + slot, mask=ok & nxt, other=0),
                       tl.load(ref_obs + slot, mask=ok & (i < B), other=0))
        e = ref >> 48
        p = (ref >> 8) & 1099511627775  # 2**40 - 1
        d = ref & 255
        lag = S - 1 - k
        row = e * F + (p - tl.minimum(lag, d)) % F
        reset_ok = tl.load(pad + 1 + r * 0, mask=ok, other=0)
        row = tl.where((reset_ok != 0) | (lag <= d), row, PAD)
        _copy_field(src, dst, row, r, W, j, ok)

    _stacks_kernel = launched(_stacks_kernel)


def stacks_triton(frames_w, ref_obs, ref_next, slots, pad, S: int, F: int, pad_row: int, out) -> None:
    """``stacks_torch`` in one launch (``pad``: the bool [3] padding flags, read as bytes)."""
    B, W = slots.shape[0], frames_w.shape[1]
    rows, chunk, warps = _block(W)
    grid = (-(-2 * B * S // rows), -(-W // chunk))
    _stacks_kernel[grid](frames_w, out, W, ref_obs, ref_next, slots, pad.view(torch.uint8), B, F, pad_row,
                         S=S, ROWS=rows, CHUNK=chunk, num_warps=warps)
