"""The runnable examples in the public docstrings run and print what they say."""
import doctest
import importlib

import pytest

MODULES = ["gpu_replay.buffers", "gpu_replay.sumtree", "gpu_replay.nstep", "gpu_replay.sampler", "gpu_replay.compat"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
    if name != "gpu_replay.compat":
        assert res.attempted > 0, f"no examples found in {name}"
