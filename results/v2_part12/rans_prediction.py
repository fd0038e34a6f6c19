"""The stack's artifact after a record run, coded by rANS (the default since session 12): predict-size's lzma line
through the stack's P60, P180 and P600 artifacts (int6 by GPTQ, lzma), its model bytes scaled by rans/lzma as the
sweep measured them on the P180 weights (the 6:12.85 point by each compressor), plus today's script's bytes.

    python3 results/v2_part12/rans_prediction.py
"""
import contextlib
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import records  # noqa: E402

logs = [ROOT / "results/v2_part11/stack_p60_s1337.txt", ROOT / "results/v2_part12/stack_p180_s1337.txt",
        ROOT / "results/v2_part8/stack_p600_s1337.txt"]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    records.main(["predict-size", "--factor", str(7509 / 1369), *map(str, logs)])  # 7,509 steps: records.py estimate
console = (ROOT / "results/v2_part12/console.txt").read_text()
model = {c: int(re.search(rf"^requantize: int6\+{c} clip_sigmas:12.85 gptq:False embed_bits:8 .*model_bytes:(\d+)",
                          console, re.M)[1]) for c in ("lzma", "rans")}
ratio = model["rans"] / model["lzma"]
old_code = records.parse_log(logs[-1]).code_bytes  # the longest run's script, inside its predicted total
code = len((ROOT / "train_gpt.py").read_bytes())
print(f"rans/lzma on the P180 weights: {model['rans']:,} / {model['lzma']:,} = {ratio:.5f}")
for what, lzma_total in re.findall(r"^(predicted|cautious): .* -> ([\d,]+) bytes", out.getvalue(), re.M):
    total = round((int(lzma_total.replace(",", "")) - old_code) * ratio) + code
    print(f"{what}: lzma {lzma_total} -> rans {total:,} bytes with today's {code:,}-byte script; "
          f"margin:{records.ARTIFACT_LIMIT_BYTES - total:,}")
