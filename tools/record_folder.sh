#!/bin/bash
# The record folder's submission.json from its three logs, then the challenge's t-test against the seed
# environment's score on the same data (README "This record"). From the repository root:
#   AUTHOR="Your Name" GITHUB_ID=you bash tools/record_folder.sh [DIR]
# DIR: the folder of train_gpt.py and the logs, where submission.json goes (default .). SEED_LOG: the score to test
# against (default: the seed environment's P600v2 run, results/v2_part8/). Name and blurb come from the logs' own
# lines: GPU, PyTorch, data. Exit status: 2 for a missing setting or a log that is missing, unfinished, of the wrong
# seed or of another train_gpt.py (one "error:" line, nothing written); else the t-test's (0: it passes).
set -u
[ -n "${AUTHOR:-}" ] && [ -n "${GITHUB_ID:-}" ] || {
  echo "error: set AUTHOR and GITHUB_ID (the submitter's name and GitHub id) for submission.json" >&2; exit 2; }
DIR=${1:-.}; ROOT=$(cd "$(dirname "$0")/.." && pwd); TOOLS=$ROOT/tools
LOGS=("$DIR/train.log" "$DIR/train_seed1338.log" "$DIR/train_seed1339.log")
SEED_LOG=${SEED_LOG:-$ROOT/results/v2_part8/seed_p600_s1337.txt}
seed_bpb=$(python3 - "$TOOLS" "$DIR" "$SEED_LOG" "${LOGS[@]}" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1]); import records
folder, seed_log, logs = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
for path in [folder / "train_gpt.py", seed_log, *logs]:
    if not Path(path).is_file():
        sys.exit(f"error: no {path}: the three seeds' logs come first (README, 'This record')")
source = (folder / "train_gpt.py").read_text(encoding="utf-8") + "\n" + "=" * 100 + "\n"
for path, seed in zip(logs, (1337, 1338, 1339)):
    run = records.parse_log(path)
    if (run.state, run.seed) != ("complete", seed):
        sys.exit(f"error: {path} is a {run.state} run of seed {run.seed}, not a finished run of seed {seed}")
    if not Path(path).read_text(encoding="utf-8").startswith(source):
        sys.exit(f"error: {path} ran another train_gpt.py than {folder / 'train_gpt.py'}: run it again")
    if run.hardware is None:
        sys.exit(f"error: {path} has no hardware: line: give the run's own log")
if records.parse_log(seed_log).roundtrip_val_bpb is None:
    sys.exit(f"error: {seed_log} has no final score: SEED_LOG must be a finished run's log")
print(records.parse_log(seed_log).roundtrip_val_bpb)
PY
) || exit 2
field() { sed -n "s/$1/\1/p" "${LOGS[0]}" | head -1; }
gpu=$(field '^hardware:\(.*\) count:.*$'); gpus="$(field '^hardware:.* count:\([0-9]*\)$')x ${gpu//_/ }"
torch=$(field '^Running PyTorch \(.*\)$'); data=$(basename "$(field '^hyperparameters: data_path=\([^ ]*\) .*$')")
knob() { field "^hyperparameters: .* $1=\([^ ]*\).*$"; }  # the run's setting, as its log states it
case $data in
  fineweb10B_*) where="FineWeb ($data)" ;;
  *) where="$data (the benchmark corpus of real English documents, not FineWeb: the score does not compare with the leaderboard's)" ;;
esac
python3 "$TOOLS/records.py" submission --author "$AUTHOR" --github-id "$GITHUB_ID" \
  --name "Training Opt Seq4096 v1 + the records' 11-layer int6 stack, on $gpus" \
  --blurb "Three 600 s runs (seeds 1337, 1338, 1339) of train_gpt.py's defaults on $gpus, PyTorch $torch, data $where. sp$(knob vocab_size), $(knob num_layers) layers, MLP $(knob mlp_mult)x, XSA, partial RoPE, LN scale, SmearGate, EMA, MuonEq-R with weight decay; int$(knob quant_bits) GPTQ blocks and int$(knob embed_bits) embedding coded by $(knob compressor); sliding-window scoring with score-first test-time training." \
  "${LOGS[@]}" > "$DIR/submission.json.tmp" && mv "$DIR/submission.json.tmp" "$DIR/submission.json" \
  || { rm -f "$DIR/submission.json.tmp"; exit 2; }
echo "wrote $DIR/submission.json; the t-test against the seed environment's $seed_bpb ($SEED_LOG):"
python3 "$TOOLS/records.py" ttest --record-bpb "$seed_bpb" "${LOGS[@]}"
