"""The README's Python block is examples/readme_example.py, character for character (ctest runs
the file, so the README cannot show code that does not run)."""
import os
import re

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def test_readme_python_block_is_the_example():
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README.md has no ```python block"
    example = open(os.path.join(ROOT, "examples", "readme_example.py")).read()
    assert blocks[0] == example, "README.md's Python block differs from examples/readme_example.py"
