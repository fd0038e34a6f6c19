"""The record folder's submission.json from its three logs, then the challenge's t-test against the seed
environment's score on the same data (README "This record"). From the repository root:

    AUTHOR="Your Name" GITHUB_ID=you python3 tools/record_folder.py [DIR]

DIR: the folder of train_gpt.py and the logs, where submission.json goes (default .). SEED_LOG: the score to test
against (default: the seed environment's P600v2 run, results/v2_part8/). Name and blurb come from the logs' own
lines: GPU, PyTorch, data, model and export. Exit status: 2 for a missing setting or a log that is missing,
unfinished, of the wrong seed or of another train_gpt.py (one "error:" line, nothing written); else the t-test's
(0: it passes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import records

SEED_LOG = Path(__file__).resolve().parents[1] / "results" / "v2_part8" / "seed_p600_s1337.txt"


def problem(folder: Path, seed_log: Path) -> str | None:
    """The first reason the folder's logs cannot make its submission, or None."""
    logs = [folder / name for name in records.RECORD_LOGS]
    for path in [folder / "train_gpt.py", seed_log, *logs]:
        if not path.is_file():
            return f"no {path}: the three seeds' logs come first (README, 'This record')"
    for path, seed in zip(logs, records.RECORD_LOGS.values()):
        why = records.record_log_problem(path, folder / "train_gpt.py", seed)
        if why is None and records.parse_log(path).hardware is None:
            why = f"{path} has no hardware: line: give the run's own log"
        if why:
            return why
    if records.parse_log(seed_log).roundtrip_val_bpb is None:
        return f"{seed_log} has no final score: SEED_LOG must be a finished run's log"
    return None


def name_and_blurb(run: records.RunSummary) -> tuple[str, str]:
    """What the runs are, from the first log: hardware, PyTorch, data (FineWeb or not), model and export."""
    gpu, count = run.hardware.rsplit(" x", 1) if " x" in run.hardware else (run.hardware, "1")
    gpus, knob = f"{count}x {gpu.replace('_', ' ')}", run.settings.get  # knob: a setting as the log states it
    data = Path(knob("data_path", "")).name
    where = (f"FineWeb ({data})" if data.startswith("fineweb10B_") else f"{data} (the benchmark corpus of real English "
             "documents, not FineWeb: the score does not compare with the leaderboard's)")
    name = f"Training Opt Seq4096 v1 + the records' 11-layer int6 stack, on {gpus}"
    blurb = (f"Three 600 s runs (seeds 1337, 1338, 1339) of train_gpt.py's defaults on {gpus}, PyTorch "
             f"{run.torch_version}, data {where}. sp{knob('vocab_size')}, {knob('num_layers')} layers, MLP "
             f"{knob('mlp_mult')}x, XSA, partial RoPE, LN scale, SmearGate, EMA, MuonEq-R with weight decay; "
             f"int{knob('quant_bits')} GPTQ blocks and int{knob('embed_bits')} embedding coded by "
             f"{knob('compressor')}; sliding-window scoring with score-first test-time training.")
    return name, blurb


def main(argv: list[str]) -> int:
    author, github_id = os.environ.get("AUTHOR"), os.environ.get("GITHUB_ID")
    if not (author and github_id):
        print("error: set AUTHOR and GITHUB_ID (the submitter's name and GitHub id) for submission.json",
              file=sys.stderr)
        return 2
    folder, seed_log = Path(argv[0] if argv else "."), Path(os.environ.get("SEED_LOG", SEED_LOG))
    why = problem(folder, seed_log)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    logs = [folder / name for name in records.RECORD_LOGS]
    try:
        record = records.submission_record(logs, author, github_id, *name_and_blurb(records.parse_log(logs[0])))
    except SystemExit as e:  # a log without its size lines: its one error line
        print(e, file=sys.stderr)
        return 2
    (folder / "submission.json").write_text(json.dumps(record, indent=2) + "\n")
    seed_bpb = records.parse_log(seed_log).roundtrip_val_bpb
    print(f"wrote {folder / 'submission.json'}; the t-test against the seed environment's {seed_bpb} ({seed_log}):")
    sys.stdout.flush()
    return records.main(["ttest", "--record-bpb", str(seed_bpb), *map(str, logs)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
