"""The repository's promises about itself."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from conftest import ROOT, readme_block

sys.path.insert(0, str(ROOT / "tools"))
import records  # noqa: E402


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


# What a record log may set apart from the defaults: where the data is, its name, no validation during training (as
# tools/proxy.sh runs it), the attention kernel the run found (the log names the one it took, not "auto"), and its
# seed (records.record_log_problem checks it against the file's name).
RECORD_RUN_SETTINGS = {"data_path", "tokenizer_path", "run_id", "val_loss_every", "sdpa_backend", "seed"}


def test_record_logs_are_finished_ten_minute_runs_of_the_committed_script_at_its_defaults():
    """Each log (one H200 each: README "This record") begins with the source it ran, so a change to train_gpt.py
    means running the logs again; its settings are the defaults, and the wallclock cap ended its training."""
    import train_gpt
    source = (ROOT / "train_gpt.py").read_text(encoding="utf-8")
    defaults = {k: str(v) for k, v in train_gpt.Hyperparameters.defaults().items()}
    for name, seed in records.RECORD_LOGS.items():  # all three: README "This record"
        assert records.record_log_problem(ROOT / name, ROOT / "train_gpt.py", seed) is None
        run = records.parse_log(ROOT / name)
        changed = {k for k in defaults if run.settings.get(k) != defaults[k]}
        assert changed <= RECORD_RUN_SETTINGS and run.settings["max_wallclock_seconds"] == "600.0", (name, changed)
        lines = (ROOT / name).read_text(encoding="utf-8")[len(source):].splitlines()  # the run's, not the source's
        assert any(line.startswith("stopping_early: wallclock_cap ") for line in lines), name
        assert run.world_size == 1 and run.artifact_bytes <= 16_000_000, name


def test_submission_json_is_what_record_folder_py_makes_of_the_three_logs():
    """Every field but who and when comes from the logs: the mean score, the largest artifact, name and blurb."""
    import record_folder
    record = json.loads((ROOT / "submission.json").read_text())
    logs = [ROOT / name for name in records.RECORD_LOGS]
    name_and_blurb = record_folder.name_and_blurb(records.parse_log(logs[0]))
    assert record == records.submission_record(logs, record["author"], record["github_id"], *name_and_blurb,
                                               record["date"])
    runs = [records.parse_log(path) for path in logs]
    assert record["val_bpb"] == round(statistics.fmean(r.roundtrip_val_bpb for r in runs), 8)
    assert record["bytes_total"] == max(r.artifact_bytes for r in runs) <= 16_000_000
    assert record["bytes_code"] == len((ROOT / "train_gpt.py").read_bytes())
    assert len({r.seed for r in runs}) == 3
