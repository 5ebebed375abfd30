"""The n-step stage's device work: ``record`` one step into the windows, ``emit`` the rows.

record (window slot w of every env e, ring of n slots):

    field_f[e, w] = input_f[e]            (obs, action, extras; next_obs with same-step final obs
                                           already put in place of the done envs' next_obs)
    reward[e, w] = r[e] (float64), term[e, w] = te[e], done[e, w] = te[e] | tr[e]
    real[e, w] = not prev_done[e], prev_done[e] = done[e, w]     (next-step autoreset)
    real[e, w] = True                                            (the other modes)

emit (the transition starting at slot ``start``, over the next L <= n window steps, in time
order j = 0..L-1 at ring slots (start + j) % n):

    k          = 1 + the first j whose step ended the episode (done), else L
    reward     = sum_{j < k} gamma**j r_j             (float64, left to right; output float32)
    discount   = gamma**k (float32)
    terminated = term at step k - 1
    next_obs   = next_obs at step k - 1;  obs, action, extras at ``start``
    valid      = real at ``start`` (False for next-step autoreset's reset steps)

Three implementations over the ``NStep``'s windows (``ns``): numba (CPU; numpy writes and one
compiled scan), torch (any device; fixed-shape tensor ops, no host sync) and Triton (one launch
for ``record``, one for ``emit``: the scan, the scalars and every field's row, for up to
``MAX_FIELDS - 1`` fields plus next_obs). All three emit the same rows bit for bit (the
return is summed left to right in float64 by each).
"""
from __future__ import annotations

import numpy as np
import torch

from ._jit import launched, numba, tl, triton
from .rows import MAX_FIELDS, _block

SEQ_SUM_MAX = 64  # the torch twin sums the return column by column up to this n (exact), else by matmul


# ----------------------------------------------------------------------------- torch
def record_torch(ns, w: int, fields: dict, nxt, rew, term, trunc) -> None:
    """Inputs are tensors on the device (or host tensors: copied with non_blocking)."""
    nb = ns.device.type == "cuda"
    ns._next_obs.select(1, w).copy_(nxt, non_blocking=nb)
    for name, t in fields.items():  # copy_ converts dtype and device in one op
        ns._win[name].select(1, w).copy_(t, non_blocking=nb)
    ns._reward.select(1, w).copy_(rew, non_blocking=nb)
    term_w, done_w = ns._term.select(1, w), ns._done.select(1, w)
    term_w.copy_(term, non_blocking=nb)
    torch.logical_or(term_w, trunc.to(ns.device, non_blocking=nb), out=done_w)
    if ns.autoreset_mode == "next_step":
        torch.logical_not(ns._prev_done, out=ns._real.select(1, w))
        ns._prev_done.copy_(done_w)
    else:
        ns._real.select(1, w).fill_(True)


def emit_torch(ns, start: int, L: int):
    """Fixed-shape tensor ops, no host sync (any device). Returns (rows, valid)."""
    order = ns._ring[start:start + L]
    done_c = ns._done.index_select(1, order)  # [E, L]
    # alive[j]: no episode end among window steps 0..j-1, i.e. j < k (cumsum_j == done_j)
    alive = done_c.cumsum(1) <= done_c
    k = alive.sum(1)  # [E], 1 <= k <= L
    rew = torch.where(alive, ns._reward.index_select(1, order), 0.0)
    if L <= SEQ_SUM_MAX:  # left to right, as the kernels sum (adding 0.0 past k changes nothing)
        ret = rew[:, 0] * ns._gpow[0]
        for j in range(1, L):
            ret = ret + rew[:, j] * ns._gpow[j]
    else:
        ret = rew.matmul(ns._gpow[:L])
    last = ns._row0 + order.index_select(0, k - 1)
    rows = {name: win.select(1, start) for name, win in ns._win.items()}
    rows["reward"] = ret.to(torch.float32)
    rows["next_obs"] = ns._next_obs.flatten(0, 1).index_select(0, last)
    rows["discount"] = ns._gpow32.index_select(0, k)
    rows["terminated"] = ns._term.view(-1).index_select(0, last)
    return rows, ns._real.select(1, start).clone()


# ----------------------------------------------------------------------------- numba
def record_numba(ns, w: int, fields: dict, nxt, rew, term, trunc) -> None:
    """Inputs are numpy arrays (or CPU tensors): numpy writes into numpy views of the windows."""
    np_ = ns._np
    for name, a in fields.items():
        _put(np_.get(name), ns._win[name], w, a)
    _put(np_.get("next_obs"), ns._next_obs, w, nxt)
    np_["reward"][:, w] = _host(rew)
    te, tr = _host(term), _host(trunc)
    np_["term"][:, w] = te
    done = te | tr
    np_["done"][:, w] = done
    if ns.autoreset_mode == "next_step":  # the call after an episode end is a reset step
        prev = np_["prev_done"]
        np_["real"][:, w] = ~prev
        prev[:] = done
    else:
        np_["real"][:, w] = True


def step_numba(ns, w: int, fields: dict, nxt: np.ndarray, rew: np.ndarray, term: np.ndarray, trunc: np.ndarray):
    """``record`` of numpy inputs, then (once the windows are full) ``emit``: the fields by numpy
    (one assignment each), the flags, the reward and the whole emission scan in one compiled
    call. Returns numpy (rows, valid) or None."""
    np_ = ns._np
    for name, a in fields.items():
        np_[name][:, w] = a
    np_["next_obs"][:, w] = nxt
    n = ns.n
    emit = ns._t + 1 >= n
    start = (w + 1) % n
    out = _emit_arrays(ns.num_envs)
    step_nb(np_["done"], np_["reward"], np_["term"], np_["real"], np_["prev_done"], rew, term, trunc, w,
            ns.autoreset_mode == "next_step", emit, ns._gpow_np, ns._gpow32_np, start, n, *out)
    return _host_rows(ns, start, *out) if emit else None


def emit_numba(ns, start: int, L: int):
    """One compiled loop over the envs. Returns numpy (rows, valid): the fields as views of the
    windows, next_obs gathered, the scalars."""
    out = _emit_arrays(ns.num_envs)
    np_ = ns._np
    emit_nb(np_["done"], np_["reward"], np_["term"], np_["real"], ns._gpow_np, ns._gpow32_np, start, L, ns.n, *out)
    return _host_rows(ns, start, *out)


def _emit_arrays(E: int) -> tuple:
    """The compiled emission's outputs: reward, discount, terminated, last, valid (one per env)."""
    return (np.empty(E, dtype=np.float32), np.empty(E, dtype=np.float32), np.empty(E, dtype=np.bool_),
            np.empty(E, dtype=np.int64), np.empty(E, dtype=np.bool_))


def _host_rows(ns, start: int, reward, discount, terminated, last, valid):
    """(rows, valid) of the CPU path: the fields as views of the windows' slot ``start``,
    next_obs gathered at ``last``, the scalars."""
    np_ = ns._np
    rows = {name: np_[name][:, start] if name in np_ else win.select(1, start) for name, win in ns._win.items()}
    rows["reward"] = reward
    rows["next_obs"] = np_["next_obs"].reshape(ns.num_envs * ns.n, *ns._next_obs.shape[2:])[last] \
        if "next_obs" in np_ else ns._next_obs.flatten(0, 1).index_select(0, torch.from_numpy(last))
    rows["discount"] = discount
    rows["terminated"] = terminated
    return rows, valid


def _host(t) -> np.ndarray:
    """A numpy view of a host input (a tensor that requires grad is detached)."""
    if isinstance(t, np.ndarray):
        return t
    return t.detach().numpy() if t.device.type == "cpu" else t.detach().cpu().numpy()


def _put(dst_np, dst: torch.Tensor, w: int, t) -> None:
    """Window slot w of every env <- t ([E, ...]), cast to the window's dtype."""
    if dst_np is not None and (isinstance(t, np.ndarray) or (t.device.type == "cpu" and t.dtype != torch.bfloat16)):
        dst_np[:, w] = _host(t)
    else:
        dst.select(1, w).copy_(t.detach() if isinstance(t, torch.Tensor) else torch.from_numpy(t))


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def step_nb(done, reward, term, real, prev_done, rew_in, term_in, trunc_in, w, next_step, emit, gpow, gpow32,
                start, n, out_r, out_disc, out_term, out_last, out_valid):
        """The flags and reward of step w (``record``), then the emission (``emit_nb``)."""
        for e in range(done.shape[0]):
            reward[e, w] = rew_in[e]
            te = term_in[e]
            d = te or trunc_in[e]
            term[e, w] = te
            done[e, w] = d
            if next_step:
                real[e, w] = not prev_done[e]
                prev_done[e] = d
            else:
                real[e, w] = True
        if emit:
            emit_nb(done, reward, term, real, gpow, gpow32, start, n, n, out_r, out_disc, out_term, out_last,
                    out_valid)

    @numba.njit(cache=True, nogil=True)
    def emit_nb(done, reward, term, real, gpow, gpow32, start, L, n, out_r, out_disc, out_term, out_last, out_valid):
        for e in range(done.shape[0]):
            ret = 0.0
            k = 0
            for jj in range(L):  # the window's steps, oldest first
                j = (start + jj) % n
                ret = ret + reward[e, j] * gpow[jj]
                k = jj + 1
                if done[e, j]:  # the episode ended at this step: k steps, no reward after it
                    break
            lastj = (start + k - 1) % n
            out_r[e] = ret
            out_disc[e] = gpow32[k]
            out_term[e] = term[e, lastj]
            out_last[e] = e * n + lastj
            out_valid[e] = real[e, start]


# ----------------------------------------------------------------------------- Triton
if triton is not None:
    from .rows import _copy_field, _copy_fields

    @triton.jit
    def _record_kernel(s0, d0, w0, s1, d1, w1, s2, d2, w2, s3, d3, w3, s4, d4, w4, s5, d5, w5, s6, d6, w6,
                       s7, d7, w7, rew_src, term_src, trunc_src, rew_win, term_win, done_win, real_win, prev_done,
                       E, n, w, NF: tl.constexpr, NEXT_STEP: tl.constexpr, ROWS: tl.constexpr,
                       CHUNK: tl.constexpr):
        """Fields (incl. next_obs, last) into window rows e * n + w; the flags by the programs
        of the first column of word chunks."""
        e = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        j = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK).to(tl.int64)
        ok = e < E
        dst = e * n + w
        _copy_fields(s0, d0, w0, s1, d1, w1, s2, d2, w2, s3, d3, w3, s4, d4, w4, s5, d5, w5, s6, d6, w6,
                     s7, d7, w7, e, dst, j, ok, NF)
        f = ok & ((e * 0 + tl.program_id(1)) == 0)  # (a block mask: the interpreter wants one)
        tl.store(rew_win + dst, tl.load(rew_src + e, mask=f, other=0.0), mask=f)
        te = tl.load(term_src + e, mask=f, other=0)
        done = te | tl.load(trunc_src + e, mask=f, other=0)
        tl.store(term_win + dst, te, mask=f)
        tl.store(done_win + dst, done, mask=f)
        if NEXT_STEP:
            tl.store(real_win + dst, 1 - tl.load(prev_done + e, mask=f, other=0), mask=f)
            tl.store(prev_done + e, done, mask=f)
        else:
            tl.store(real_win + dst, done * 0 + 1, mask=f)


    _record_kernel = launched(_record_kernel)
    @triton.jit
    def _emit_kernel(s0, d0, w0, s1, d1, w1, s2, d2, w2, s3, d3, w3, s4, d4, w4, s5, d5, w5, s6, d6, w6,
                     ns_, nd, nw, rew_win, done_win, term_win, real_win, gpow, gpow32,
                     out_r, out_disc, out_term, out_valid, E, n, start, L,
                     NF: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr):
        """Per env: the scan (k, the return), the scalars (first column of chunks), every
        field's row from slot ``start`` and next_obs's from slot k - 1."""
        e = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
        j = tl.program_id(1).to(tl.int64) * CHUNK + tl.arange(0, CHUNK).to(tl.int64)
        ok = e < E
        ret = tl.zeros([ROWS], dtype=tl.float64)
        k = tl.zeros([ROWS], dtype=tl.int64)
        stopped = tl.zeros([ROWS], dtype=tl.int32)
        jj = L * 0
        while jj < L:
            slot = (start + jj) % n
            alive = stopped == 0
            r = tl.load(rew_win + e * n + slot, mask=ok, other=0.0)
            ret = tl.where(alive, ret + r * tl.load(gpow + jj), ret)
            k = tl.where(alive, jj + 1, k)
            d = tl.load(done_win + e * n + slot, mask=ok, other=0)
            stopped = stopped | (d != 0).to(tl.int32)
            jj += 1
        last = e * n + (start + k - 1) % n
        first = e * n + start
        f = ok & ((e * 0 + tl.program_id(1)) == 0)  # (a block mask: the interpreter wants one)
        tl.store(out_r + e, ret.to(tl.float32), mask=f)
        tl.store(out_disc + e, tl.load(gpow32 + k, mask=f, other=0.0), mask=f)
        tl.store(out_term + e, tl.load(term_win + last, mask=f, other=0), mask=f)
        tl.store(out_valid + e, tl.load(real_win + first, mask=f, other=0), mask=f)
        # the fields from slot ``start``, next_obs (the eighth) from slot k - 1: two calls of the copy
        _copy_fields(s0, d0, w0, s1, d1, w1, s2, d2, w2, s3, d3, w3, s4, d4, w4, s5, d5, w5, s6, d6, w6,
                     s0, d0, w0, first, e, j, ok, NF)
        _copy_field(ns_, nd, last, e, nw, j, ok)

    _emit_kernel = launched(_emit_kernel)


def _pad(triples, k: int) -> list:
    """k (src, dst, width) slots: the given ones, then repeats of the first (unused: NF)."""
    args = []
    for i in range(k):
        args += list(triples[i] if i < len(triples) else triples[0])
    return args


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def record_triton(ns, w: int, fields: dict, nxt, rew, term, trunc) -> None:
    """One launch (inputs on the device: staged by the caller). More than MAX_FIELDS fields
    (with next_obs): the torch twin."""
    E = ns.num_envs
    from gpu_replay.storage import wide_rows
    srcs = [*fields.values(), nxt]
    if len(srcs) > MAX_FIELDS:
        return record_torch(ns, w, fields, nxt, rew, term, trunc)
    triples = [(wide_rows(s, E), ns._wwin[name], ns._wwin[name].shape[1])
               for name, s in zip([*fields, "next_obs"], srcs)]
    rows, chunk, warps = _block(max(t[2] for t in triples))
    grid = (-(-E // rows), -(-max(t[2] for t in triples) // chunk))
    _record_kernel[grid](*_pad(triples, MAX_FIELDS), rew, _u8(term), _u8(trunc), ns._reward, _u8(ns._term),
                         _u8(ns._done), _u8(ns._real), _u8(ns._prev_done), E, ns.n, w, NF=len(triples),
                         NEXT_STEP=ns.autoreset_mode == "next_step", ROWS=rows, CHUNK=chunk, num_warps=warps)


def emit_triton(ns, start: int, L: int):
    """One launch: every row complete and contiguous. More than MAX_FIELDS - 1 fields: the twin."""
    if len(ns._win) > MAX_FIELDS - 1:
        return emit_torch(ns, start, L)
    E, dev = ns.num_envs, ns.device
    outs = {name: torch.empty((E, ns._wwin[name].shape[1]), dtype=ns._wwin[name].dtype, device=dev)
            for name in [*ns._win, "next_obs"]}
    triples = [(ns._wwin[name], outs[name], outs[name].shape[1]) for name in ns._win]
    nxt = (ns._wwin["next_obs"], outs["next_obs"], outs["next_obs"].shape[1])
    rows, chunk, warps = _block(max(t[2] for t in (*triples, nxt)))
    reward = torch.empty(E, dtype=torch.float32, device=dev)
    discount = torch.empty(E, dtype=torch.float32, device=dev)
    terminated = torch.empty(E, dtype=torch.bool, device=dev)
    valid = torch.empty(E, dtype=torch.bool, device=dev)
    grid = (-(-E // rows), -(-max(t[2] for t in (*triples, nxt)) // chunk))
    _emit_kernel[grid](*_pad(triples, MAX_FIELDS - 1), *nxt, ns._reward, _u8(ns._done), _u8(ns._term), _u8(ns._real),
                       ns._gpow, ns._gpow32, reward, discount, _u8(terminated), _u8(valid), E, ns.n, start, L,
                       NF=len(triples), ROWS=rows, CHUNK=chunk, num_warps=warps, enable_fp_fusion=False)
    out = {}
    for name, o in outs.items():
        shape, dt = (ns._fields[name] if name != "next_obs" else ns._fields["obs"])
        out[name] = o.view(torch.uint8).view(dt).view(E, *shape)
    out["reward"], out["discount"], out["terminated"] = reward, discount, terminated
    return {k: out[k] for k in [*ns._win, "reward", "next_obs", "discount", "terminated"]}, valid
