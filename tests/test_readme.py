"""The README's set-up block is what CI runs, and its install stays CPU-only (issue 12, item 6)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_block() -> list[str]:
    """The command lines of the first bash block under "Set up and run the tests"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Set up and run the tests") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_setup_is_one_install_one_test_one_demo_and_ci_runs_them():
    install, test, demo = setup_block()
    assert install == "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]'"
    assert test == "python -m pytest -q"
    assert demo.startswith("python -m cptrans_jax.train --config configs/demo.py ")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # Literally the README's lines, not a variant of them.
    assert install in ci and test in ci
    assert not any("--index-url" in line or "install torch" in line for line in ci)


def test_test_extra_pins_torch():
    # An open range lets pip take the newest torch, a CUDA build; the pinned one is the CPU wheel.
    # (Read as text: tomllib is Python 3.11+, and the project supports 3.10.)
    extra = re.search(r"^test = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert extra is not None
    torch = [r for r in re.findall(r'"([^"]+)"', extra.group(1)) if r.startswith("torch")]
    assert torch == ["torch==2.13.0"]
