"""The README's Python tour is examples/python_tour.py as written (tests/test_examples.py runs that
script end to end on a tiny model), so every name the tour uses is defined and the tour stays true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tour_as_shown(script: str) -> str:
    """The script as the README shows it: without its module docstring, `import os` and the two
    lines that switch CI to the tiny model."""
    body = re.sub(r'^""".*?"""\n\n', "", script, flags=re.S).replace("import os\n\n", "", 1)
    switch = r'if os\.environ\.get\("SPARSESTEER_EXAMPLE_TINY"\):.*\n    from _tiny import \*.*\n'
    assert len(re.findall(switch, body)) == 1, "examples/python_tour.py lost its SPARSESTEER_EXAMPLE_TINY switch"
    return re.sub(switch, "", body)


def test_python_tour_is_the_example_script():
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert block == tour_as_shown((ROOT / "examples" / "python_tour.py").read_text())
    assert "os." not in block and "_tiny" not in block
