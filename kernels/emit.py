"""The n-step emission: for each env, the transition that starts at a window slot.

Over the window's steps in time order j = 0..L-1 (ring slots (start + j) % n):

    k          = 1 + the first j whose step ended the episode (terminated or truncated), else L
    reward     = sum_{j < k} gamma**j r_j             (float64, left to right; output float32)
    discount   = gamma**k (float32)
    terminated = term at step k - 1
    last       = e * n + slot of step k - 1            (the row of next_obs in the [E * n] window)
    valid      = real at ``start`` (False for next-step autoreset's reset steps)

``nstep`` holds the windows; the ops read them (``ns`` is the ``NStep``).
"""
from __future__ import annotations

import torch

from ._jit import numba


def emit_torch(ns, start: int, L: int):
    """Fixed-shape tensor ops, no host sync (any device)."""
    order = ns._ring[start:start + L]
    done_c = ns._done.index_select(1, order)  # [E, L]
    # alive[j]: no episode end among window steps 0..j-1, i.e. j < k (cumsum_j == done_j)
    alive = done_c.cumsum(1) <= done_c
    k = alive.sum(1)  # [E], 1 <= k <= L
    ret = torch.where(alive, ns._reward.index_select(1, order), 0.0).matmul(ns._gpow[:L])
    last = ns._row0 + order.index_select(0, k - 1)
    return (ret.to(torch.float32), ns._gpow32.index_select(0, k), ns._term.view(-1).index_select(0, last), last,
            ns._real.select(1, start).clone())


def emit_numba(ns, start: int, L: int):
    """One compiled loop over the envs (the return summed left to right in float64)."""
    E = ns.num_envs
    reward = torch.empty(E, dtype=torch.float32)
    discount = torch.empty(E, dtype=torch.float32)
    terminated = torch.empty(E, dtype=torch.bool)
    last = torch.empty(E, dtype=torch.int64)
    valid = torch.empty(E, dtype=torch.bool)
    emit_nb(ns._np["done"], ns._np["reward"], ns._np["term"], ns._np["real"], ns._gpow_np, ns._gpow32_np,
            start, L, ns.n, reward.numpy(), discount.numpy(), terminated.numpy(), last.numpy(), valid.numpy())
    return reward, discount, terminated, last, valid


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def emit_nb(done, reward, term, real, gpow, gpow32, start, L, n, out_r, out_disc, out_term, out_last, out_valid):
        for e in range(done.shape[0]):
            ret = 0.0
            k = 0
            for jj in range(L):  # the window's steps, oldest first
                j = (start + jj) % n
                ret += reward[e, j] * gpow[jj]
                k = jj + 1
                if done[e, j]:  # the episode ended at this step: k steps, no reward after it
                    break
            lastj = (start + k - 1) % n
            out_r[e] = ret
            out_disc[e] = gpow32[k]
            out_term[e] = term[e, lastj]
            out_last[e] = e * n + lastj
            out_valid[e] = real[e, start]
