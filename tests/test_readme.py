"""Every code block of README.md runs: the ```python blocks in order, in one namespace, as a
reader would paste them (the main example trains a tiny network on a small gymnasium vector
env); the ```bash blocks name only commands and files that exist."""
import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_the_readme_has_code_to_run():
    assert len(blocks("python")) >= 2


def test_every_python_block_runs(monkeypatch):
    pytest.importorskip("gymnasium")
    torch.set_num_threads(1)
    monkeypatch.chdir(ROOT)
    ns = {"__name__": "__readme__"}
    for i, code in enumerate(blocks("python")):
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), ns)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"README python block {i} failed: {type(e).__name__}: {e}\n{code}") from e


def test_bash_blocks_name_what_exists():
    for code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():  # continuation lines joined
            words = shlex.split(line, comments=True)
            for w in words:
                if re.fullmatch(r"[\w./-]+\.(py|sh|toml|md|json)", w) and not w.startswith("/"):
                    assert (ROOT / w).exists(), f"README names {w}, which does not exist"
            if words[:3] == ["python", "-m", "bench"] or (len(words) > 2 and words[:2] == ["python", "-m"]):
                mod = words[2]
                path = ROOT / mod.replace(".", "/")
                assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), mod
