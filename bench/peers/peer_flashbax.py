"""flashbax prioritised flat buffer (JAX; CPU here, the GPU when JAX has one).

flashbax's flat buffer stores time steps in a [rows, time] grid and samples (t, t+1) pairs,
so a transition's next_obs is the next step's obs: a time step here holds obs, action,
reward, done, and sample() gathers both steps (first/second) of every pair.

flashbax fixes the number of rows added per call (add_batch_size) when the buffer is made.
add(B) is flashbax's idiom for B parallel environments: a [B, 1] block into a buffer made
with B rows, so prepare_add(B) rebuilds and refills the buffer with B rows (untimed; the
capacity becomes (capacity // B) * B, as flashbax truncates it for its users). With
$PEERS_FLASHBAX_ROWS=R the layout stays R rows and add(B) adds [R, B // R] sequences
instead (about half the time of [B, 1] at B=1024 here).
Functions are jitted the way flashbax's README does (add and set_priorities donate the
state); sample() is jitted per B and also computes the IS weights (N P(i)) ** -beta / max
from the returned probabilities and splits the PRNG key. Each call ends with
block_until_ready, so the timings include the work, and the first call per shape (compile)
is in the warm-up.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ._core import ALPHA, PeerUnavailable, fill_chunks, make_rows, spec


class FlashbaxBuffer:
    notes = "flashbax make_prioritised_flat_buffer, jitted, next_obs = obs of the next step"

    def __init__(self, capacity: int, spec_kind: str, device: str = "cpu"):
        import flashbax as fbx
        import jax
        import jax.numpy as jnp

        self.fbx, self.jax, self.jnp = fbx, jax, jnp
        self.version = f"flashbax {_dist_version('flashbax')} (jax {jax.__version__})"
        self.requested_capacity = int(capacity)
        self.spec_kind = spec_kind
        env_rows = os.environ.get("PEERS_FLASHBAX_ROWS")
        self.fixed_rows = int(env_rows) if env_rows else None
        self.fdev = "gpu" if device.startswith("cuda") else "cpu"
        f = spec(spec_kind)
        # a time step: obs, action, reward, done (next_obs comes from the next step)
        self.step_fields = {k: f[k] for k in ("obs", "action", "reward", "done")}
        self.key = jax.random.PRNGKey(0)
        self.eps = 1e-6
        self._filled = 0
        self._layout(self.fixed_rows or 16)

    def _layout(self, rows: int) -> None:
        """(Re)build buffer functions and an empty state for `rows` rows per add."""
        jax, jnp = self.jax, self.jnp
        if rows > self.requested_capacity // 2:
            raise PeerUnavailable(f"{rows} rows per add leave no time axis at this capacity")
        self.rows = rows
        # flashbax keeps max_length // rows steps per row (it truncates, as for its users)
        self.T = self.requested_capacity // rows
        self.capacity = self.T * rows
        self._buffers: dict[int, object] = {}
        self._samplers: dict[int, object] = {}
        self._block = None
        self.state = None  # release the old state before allocating the new one
        base = self._buffer(1)  # add/set_priorities do not depend on the sample size
        self._add = jax.jit(base.add, donate_argnums=0)
        self._set = jax.jit(base.set_priorities, donate_argnums=0)
        # JAX without x64 stores int64 as int32 (as a flashbax user gets by default)
        example = {k: jnp.zeros(s, dtype=np.int32 if np.dtype(d) == np.int64 else d)
                   for k, (s, d) in self.step_fields.items()}
        self.state = base.init(example)

    def _buffer(self, sample_B: int):
        if sample_B not in self._buffers:
            self._buffers[sample_B] = self.fbx.make_prioritised_flat_buffer(
                max_length=self.capacity,
                min_length=self.rows,
                sample_batch_size=sample_B,
                add_sequences=True,
                add_batch_size=self.rows,
                priority_exponent=ALPHA,
                device=self.fdev,
            )
        return self._buffers[sample_B]

    def _sampler(self, B: int):
        if B not in self._samplers:
            jax, jnp = self.jax, self.jnp
            buf = self._buffer(B)
            n = self.capacity

            def sample_w(state, key, beta):
                key, sub = jax.random.split(key)
                s = buf.sample(state, sub)
                w = (n * s.probabilities) ** (-beta)
                w = w / jnp.max(w)
                return key, s.experience, s.indices, w

            self._samplers[B] = jax.jit(sample_w)
        return self._samplers[B]

    def sync(self) -> None:
        self.jax.block_until_ready(self.state)

    def _put(self, rows: dict, T: int):
        # [rows * T] -> [rows, T] per field
        jnp = self.jnp
        out = {}
        for k in self.step_fields:
            v = rows[k].reshape(self.rows, T, *rows[k].shape[1:])
            out[k] = jnp.asarray(v.astype(np.int32) if v.dtype == np.int64 else v)
        return out

    def fill(self, n: int) -> None:
        jnp = self.jnp
        n = min(int(n), self.capacity)
        self._filled = n
        chunk_T = max(1, (1 << 16) // self.rows) if self.spec_kind == "vec8" else max(1, 1024 // self.rows)
        chunk_T = min(chunk_T, self.T)
        pos = 0
        tds = []
        pending = None
        for rows, td in fill_chunks(self.spec_kind, n):
            if pending is not None:
                rows = {k: np.concatenate([pending[k], rows[k]]) for k in rows}
            m = len(rows["obs"])
            step = chunk_T * self.rows
            i = 0
            while m - i >= step:
                block = {k: v[i : i + step] for k, v in rows.items()}
                self.state = self._add(self.state, self._put(block, chunk_T))
                i += step
            pending = {k: v[i:] for k, v in rows.items()} if i < m else None
            tds.append(td)
            pos += len(td)
        if pending is not None and len(pending["obs"]) >= self.rows:
            T = len(pending["obs"]) // self.rows
            block = {k: v[: T * self.rows] for k, v in pending.items()}
            self.state = self._add(self.state, self._put(block, T))
        td = np.concatenate(tds)[: self.capacity]
        idx = jnp.arange(len(td), dtype=jnp.int32)
        self.state = self._set(self.state, idx, jnp.asarray(td + self.eps))
        self.sync()

    def prepare_add(self, B: int) -> None:
        if self.fixed_rows is None and B != self.rows:
            # B parallel environments, one step each: a [B, 1] add, flashbax's flat-buffer
            # idiom; the buffer is rebuilt and refilled with B rows (untimed)
            self._layout(B)
            self.fill(self._filled or self.capacity)
        if B % self.rows:
            raise PeerUnavailable(f"add({B}) is not a multiple of {self.rows} rows")
        rows = make_rows(self.spec_kind, B, np.random.default_rng(7))
        self._block = (B, self.jax.device_put(self._put(rows, B // self.rows)))

    def add(self, B: int) -> None:
        if self._block is None or self._block[0] != B:
            self.prepare_add(B)
        self.state = self._add(self.state, self._block[1])

    def sample(self, B: int, beta: float):
        self.key, exp, idx, w = self._sampler(B)(self.state, self.key, beta)
        self.jax.block_until_ready((exp, idx, w))
        return idx

    def prepare_priorities(self, pr: np.ndarray):
        return self.jnp.asarray(pr + self.eps)

    def random_keys(self, B: int, rng):
        return self.jnp.asarray(rng.integers(0, self.capacity, B).astype(np.int32))

    def update(self, idx, priorities) -> None:
        self.state = self._set(self.state, idx, priorities)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def make(capacity: int, spec_kind: str = "vec8", device: str = "cpu") -> FlashbaxBuffer:
    import sys

    if device == "cpu" and "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # keep a CPU measurement off any GPU
    try:
        import flashbax  # noqa: F401
        import jax
    except ImportError as e:
        raise PeerUnavailable(f"flashbax/jax not installed ({e}); run bench/setup_peers.sh") from None
    if device.startswith("cuda"):
        try:
            jax.devices("gpu")
        except RuntimeError:
            raise PeerUnavailable("JAX has no GPU backend here (jax[cuda] not installed)") from None
    spec(spec_kind)
    warnings.filterwarnings("ignore", message=".*donated.*")
    return FlashbaxBuffer(capacity, spec_kind, device)
