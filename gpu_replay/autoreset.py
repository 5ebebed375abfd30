"""Gymnasium's autoreset modes, and what a vector env's ``info`` says about episode ends.

gymnasium.vector.AutoresetMode:

- ``"next_step"`` (gymnasium's default): the call after an env's episode ended is its reset
  step (obs = the old episode's last obs, reward 0, next_obs = the new episode's first obs).
  It is not a transition: the n-step stage emits it as an invalid row, never sampled.
- ``"same_step"``: on the step that ends an episode, ``next_obs`` is already the new
  episode's first obs; the true final observation is ``info["final_obs"][i]`` (mask
  ``info["_final_obs"]``). Pass ``info=info`` to every ``step`` (or ``final_obs=``).
- ``"disabled"``: you reset envs yourself; every call is a real transition.

The mode must match the env's. Take it from the env: ``autoreset_mode=envs.metadata
["autoreset_mode"]`` (or pass the vector env itself). What can be checked for free is: a
``step`` whose ``info`` carries ``final_obs`` while the mode is not same-step raises, with
the fix in the message.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ._checks import as_tensor, check_field

AUTORESET_MODES = ("next_step", "same_step", "disabled")
# gymnasium.vector.AutoresetMode values, accepted too (no gymnasium import needed)
_GYM_VALUES = {"NextStep": "next_step", "SameStep": "same_step", "Disabled": "disabled"}


def parse_mode(mode) -> str:
    """A mode name, a ``gymnasium.vector.AutoresetMode``, or a vector env (its
    ``metadata["autoreset_mode"]``)."""
    meta = getattr(mode, "metadata", None)
    if isinstance(meta, Mapping) and "autoreset_mode" in meta:
        mode = meta["autoreset_mode"]
    raw = getattr(mode, "value", mode)  # an Enum
    if isinstance(raw, str):
        if raw in AUTORESET_MODES:
            return raw
        if raw in _GYM_VALUES:
            return _GYM_VALUES[raw]
    raise ValueError(f"autoreset_mode: expected one of {list(AUTORESET_MODES)}, a gymnasium.vector.AutoresetMode "
                     f"or a vector env (envs.metadata['autoreset_mode']), got {mode!r}")


def final_obs(mode: str, num_envs: int, terminated: torch.Tensor, truncated: torch.Tensor, info, final,
              final_mask, shape: tuple, dtype: torch.dtype):
    """None, or (dense final obs [E, *shape] (a host or device tensor), mask [E]) for the
    envs whose episode ended this step (same-step autoreset). Checks only; moves nothing."""
    E = num_envs
    if info is not None and not isinstance(info, Mapping):
        raise TypeError(f"step: info: expected a mapping (the info dict of env.step), got {type(info).__name__}")
    if mode != "same_step":
        if final is not None or final_mask is not None:
            raise TypeError(f"step: final_obs: expected none with autoreset_mode={mode!r} (final_obs and "
                            f"final_obs_mask belong to 'same_step'), got one")
        if info is not None and ("final_obs" in info or "_final_obs" in info):
            raise ValueError(f"step: info: expected no 'final_obs' with autoreset_mode={mode!r}, got one: the "
                             f"env autoresets in the same step (gymnasium AutoresetMode.SAME_STEP), so next_obs "
                             f"of a done env is already the next episode's first obs. Construct with "
                             f"autoreset_mode=envs.metadata['autoreset_mode'] (here 'same_step')")
        return None
    if info is None and final is None:
        raise TypeError("step: info: expected info=info (the dict env.step returned) or final_obs= with "
                        "autoreset_mode='same_step' (each done env's true final observation), got neither")
    if info is not None:
        if final is not None:
            raise TypeError("step: final_obs: expected either info= or final_obs=, got both")
        final = info.get("final_obs")
        if final_mask is None:
            final_mask = info.get("_final_obs")
    mask = None
    if final_mask is not None:
        mask = as_tensor(final_mask, "step: final_obs_mask")
        if mask.dtype != torch.bool or tuple(mask.shape) != (E,):
            raise ValueError(f"step: final_obs_mask (info['_final_obs']): expected a bool mask of shape [{E}], "
                             f"got {mask.dtype} {tuple(mask.shape)}")
    if final is None:
        if mask is not None and mask.device.type == "cpu" and bool(mask.any()):
            raise ValueError("step: final_obs: expected the final observations of the envs marked in "
                             "final_obs_mask, got none")
        dense, mask = None, torch.zeros(E, dtype=torch.bool)
    elif isinstance(final, np.ndarray) and final.dtype == object:
        # gymnasium: an object array holding each done env's final obs, None elsewhere
        if final.shape != (E,):
            raise ValueError(f"step: final_obs: expected an object array of shape ({E},) (one entry per env), "
                             f"got shape {final.shape}")
        present = np.array([x is not None for x in final], dtype=bool)
        m = present if mask is None else mask.cpu().numpy()
        if (m & ~present).any():
            raise ValueError(f"step: final_obs: expected a final obs for every env marked in final_obs_mask, "
                             f"got None for envs {np.flatnonzero(m & ~present).tolist()}")
        dense = torch.zeros((E, *shape), dtype=dtype)
        for e in np.flatnonzero(m):
            dense[e] = check_field(final[e], f"step: final_obs[{e}]", (), shape, dtype)
        mask = torch.from_numpy(m)
    else:
        dense = check_field(final, "step: final_obs", (E,), shape, dtype)
        if mask is None:  # a dense array: used for the done envs
            mask = terminated.to(truncated.device) | truncated
    # If the flags live on the host, check for free that every done env has its final obs.
    if terminated.device.type == "cpu" and truncated.device.type == "cpu" and mask.device.type == "cpu":
        missing = (terminated | truncated) & ~mask
        if bool(missing.any()):
            raise ValueError(f"step: final_obs: expected a final observation for every done env (with same-step "
                             f"autoreset next_obs is already the next episode's first obs), got none for envs "
                             f"{missing.nonzero().flatten().tolist()}")
    return dense, mask
