"""The repository's promises about itself."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT, readme_block


def test_ci_runs_the_readme_test_command():
    test_command = readme_block("test-command")
    assert test_command.endswith("&& python3 -m pytest -q tests --slow")  # both layers and "\n" not in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
    for requirements in re.findall(r"-r (\S+)", test_command):
        assert (ROOT / requirements).is_file(), requirements


def test_readme_starts_with_the_two_commands_a_newcomer_needs():
    readme = (ROOT / "README.md").read_text()
    main, test = readme.index("<!-- main-command -->"), readme.index("<!-- test-command -->")
    assert main < test < readme.index("\n## ") and len(readme) <= 20_000
    install, download, train = readme_block("main-command").split(" && ")
    assert install == "python3 -m pip install -r requirements.txt"
    assert download.startswith("python3 data/download.py --variant sp8192 ")  # train_gpt.py's default data
    assert train == "torchrun --standalone --nproc_per_node=8 train_gpt.py"


def test_record_script_stays_small_and_self_contained():
    source = (ROOT / "train_gpt.py").read_text()
    assert len(source.splitlines()) <= 1500, "the challenge's readability limit"
    imports = set(re.findall(r"^(?:from|import) (\w+)", source, re.M))
    assert imports <= {"__future__", "copy", "io", "lzma", "math", "os", "random", "subprocess", "sys", "time",
                       "uuid", "zlib", "dataclasses", "pathlib", "numpy", "sentencepiece", "torch"}, imports


def test_readme_tiny_example_is_the_command_that_data_tiny_prints(monkeypatch):
    """tests/test_data_tools.py runs the printed command end to end; the README must show that one."""
    import tiny
    monkeypatch.chdir(ROOT)  # the README's commands run from the repository root
    printed = tiny.train_command(Path("data/datasets/tiny_sp512"), Path("data/tokenizers/tiny_512.model"))
    assert readme_block("tiny-cpu-example") == f"python3 data/tiny.py --overwrite && {printed}"
    assert "TTT_EPOCHS=0" in printed and "..." not in printed
