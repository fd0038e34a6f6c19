"""The repository's promises about itself."""

from __future__ import annotations

import re

from conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    test_command = first_block.splitlines()[1].split("#")[0].strip()
    assert test_command == "python3 -m pytest -q tests"
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_record_script_stays_small_and_self_contained():
    source = (ROOT / "train_gpt.py").read_text()
    assert len(source.splitlines()) <= 1500, "the challenge's readability limit"
    imports = set(re.findall(r"^(?:from|import) (\w+)", source, re.M))
    assert imports <= {"__future__", "copy", "io", "lzma", "math", "os", "random", "subprocess", "sys", "time",
                       "uuid", "zlib", "dataclasses", "pathlib", "numpy", "sentencepiece", "torch"}, imports
