"""The README's Python examples run as written (each block on its own, in a fresh namespace)."""

import pathlib
import re

import pytest

_README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_BLOCKS = re.findall(r"```python\n(.*?)```", _README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples():
  assert len(_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(_BLOCKS)))
def test_readme_example_runs(index):
  exec(compile(_BLOCKS[index], f"README.md python block {index + 1}", "exec"), {})
