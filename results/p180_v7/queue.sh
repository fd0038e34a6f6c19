#!/bin/bash
# The device queue planned for the next device session: written in session 7 (2026-11-29), which had
# no device time left (47 s of 1,800), so nothing here has run yet. It settles the sixth session's
# one-seed winners with their second seed before any default changes (issue 5's rule).
# Start with: setsid nohup bash results/p180_v7/queue.sh > /dev/null 2>&1 < /dev/null &
# (carry .bench/); it runs from a private copy of the repository and writes console output and logs
# to /tmp/q, then touches /tmp/q/done.
# Order = priority (the device time may end first). P180 step times differ 1-2.5% between
# machines, so each switch is compared with this queue's own defaults run at the same seed.
set -u; export PYTHONUNBUFFERED=1
Q=/tmp/q; mkdir -p $Q; rm -rf /tmp/repo; cp -r . /tmp/repo; cd /tmp/repo
exec >> $Q/console.txt 2>&1
export RESULTS=$Q HOLDOUT=0
echo "== queue start $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader) $(git log --oneline -1)"
python3 -c "import torch; print('torch', torch.__version__)"
bash tools/p180.sh def 1338 ""
bash tools/p180.sh rown 1338 "MUON_ROW_NORM=1"
bash tools/p180.sh wd 1338 "MUON_WEIGHT_DECAY=0.04"
bash tools/p180.sh rown_wd 1338 "MUON_ROW_NORM=1 MUON_WEIGHT_DECAY=0.04"
bash tools/p180.sh rown_wd 1337 "MUON_ROW_NORM=1 MUON_WEIGHT_DECAY=0.04"
bash tools/p180.sh def 1337 ""
bash tools/p180.sh recur2 1337 "RECUR_LAYERS=2 RECUR_START=3"
echo "== queue done $(date -u +%T)"; touch $Q/done
