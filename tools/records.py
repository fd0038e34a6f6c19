"""A record submission's last mile, from train_gpt.py logs: summary table, significance test,
submission.json, loss plots and the artifact-size check.

    python3 tools/records.py summarize logs/*.txt
    python3 tools/records.py ttest --record-bpb 1.2014 logs/a.txt logs/b.txt logs/c.txt
    python3 tools/records.py submission --author "Jane Doe" --github-id jdoe --name "My record" \\
        --blurb "what changed" logs/a.txt logs/b.txt logs/c.txt > submission.json
    python3 tools/records.py plot --out curves.png logs/a.txt logs/b.txt
    python3 tools/records.py size logs/a.txt            # or: size --code train_gpt.py --model x.int8.ptz
    python3 tools/records.py predict-size --factor 5.47 p60.txt p180.txt p600.txt
    python3 tools/records.py compare base_s1.txt new_s1.txt base_s2.txt new_s2.txt
    python3 tools/records.py estimate logs/p600.txt     # the record run on 8xH100, from a one-GPU run

Reads the log lines of train_gpt.py (and of the published record script, which has the same
shapes); summarize and plot skip other files given with them (a queue's console.txt, build logs).
Standard library only, except `plot`, which needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ARTIFACT_LIMIT_BYTES = 16_000_000  # decimal, code + compressed model
LN2 = math.log(2)


# ---- reading logs ---------------------------------------------------------------------------

@dataclass
class RunSummary:
    path: str
    run_id: str
    state: str = "truncated"  # complete | eval-only | truncated (no score line: crashed, killed or running)
    is_log: bool = False  # has a header line of train_gpt.py (and the record script): else a console or build log
    seed: int | None = None
    world_size: int | None = None
    hardware: str | None = None
    iterations: int | None = None
    train_batch_tokens: int | None = None
    steps: int | None = None
    step_avg_ms: float | None = None
    train_time_ms: float | None = None
    val_loss: float | None = None  # pre-quantization: the last validation
    val_bpb: float | None = None
    roundtrip_val_loss: float | None = None  # the score of record
    roundtrip_val_bpb: float | None = None
    eval_time_ms: float | None = None
    scored_targets: int | None = None  # of the final score: the whole split's with sliding windows, else whole sequences
    artifact_bytes: int | None = None  # code + compressed model
    export: str | None = None  # how the model was exported: int8+zlib (the seed), int6+rans, ...
    model_bytes: int | None = None
    code_bytes: int | None = None
    peak_alloc_mib: int | None = None
    torch_version: str | None = None
    settings: dict[str, str] = field(default_factory=dict)  # the hyperparameters line: each setting as it ran
    train_curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, time_ms, loss)
    val_curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, time_ms, val_bpb)

    @property
    def tokens_per_byte(self) -> float | None:
        """From the log's own numbers: val_bpb = val_loss / ln 2 * tokens / bytes."""
        if self.roundtrip_val_bpb is None or not self.roundtrip_val_loss:
            return None
        return self.roundtrip_val_bpb * LN2 / self.roundtrip_val_loss


NUM = r"(\d+(?:\.\d+)?)"
EXPORT = r"int\d+\+[a-z]+"  # what the export did: int8+zlib (the seed), int6+lzma, ...
PATTERNS = {
    "hyper": re.compile(r"^hyperparameters: (.*)$"),
    "seed": re.compile(r"^seed:(\d+)$"),
    "world": re.compile(r"^world_size:(\d+) grad_accum_steps:\d+$"),
    "hardware": re.compile(r"^hardware:(\S+) count:(\d+)$"),
    "torch": re.compile(r"^Running PyTorch (\S+)$"),
    "smi_gpu": re.compile(r"^\|\s+\d+\s+(NVIDIA [^|]*?)\s+(?:On|Off)\s+\|"),
    "train": re.compile(rf"^step:(\d+)/(\d+) train_loss:{NUM} train_time:{NUM}ms step_avg:{NUM}ms$"),
    "val": re.compile(rf"^step:(\d+)/(\d+) val_loss:{NUM} val_bpb:{NUM} train_time:{NUM}ms step_avg:{NUM}ms$"),
    "peak": re.compile(r"^peak memory allocated: (\d+) MiB"),
    "code": re.compile(r"^Code size: (\d+) bytes$"),
    "model": re.compile(rf"^Serialized model {EXPORT}: (\d+) bytes"),
    "total": re.compile(rf"^Total submission size ({EXPORT}): (\d+) bytes$"),
    "eval_only": re.compile(r"^eval_artifact:"),
    "targets": re.compile(r"^(?:val_loader:shards pattern=\S+ tokens|final_eval:sliding_window .* targets):(\d+)$"),
    "roundtrip": re.compile(rf"^final_int\d+_[a-z]+_roundtrip val_loss:{NUM} val_bpb:{NUM} eval_time:{NUM}ms$"),
    "exact": re.compile(rf"^final_int\d+_[a-z]+_roundtrip_exact val_loss:{NUM} val_bpb:{NUM}$"),
}


def parse_log(path: Path) -> RunSummary:
    s = RunSummary(path=str(path), run_id=Path(path).stem)
    gpus = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        for name, pattern in PATTERNS.items():
            m = pattern.match(line)
            if m:
                apply_match(s, name, m, gpus)
                break
    if s.hardware is None and gpus:
        s.hardware = f"{gpus[0].replace(' ', '_')} x{len(gpus)}"
    return s


def apply_match(s: RunSummary, name: str, m: re.Match, gpus: list[str]) -> None:
    g = m.groups()
    s.is_log = s.is_log or name in ("hyper", "world")
    if name == "hyper":
        s.settings = dict(item.split("=", 1) for item in g[0].split() if "=" in item)
        s.run_id = s.settings.get("run_id") or s.run_id
        s.train_batch_tokens = int(s.settings["train_batch_tokens"]) if "train_batch_tokens" in s.settings else None
    elif name == "seed":
        s.seed = int(g[0])
    elif name == "world":
        s.world_size = int(g[0])
    elif name == "hardware":
        s.hardware = g[0] if g[0] == "cpu" else f"{g[0]} x{g[1]}"
    elif name == "torch":
        s.torch_version = g[0]
    elif name == "smi_gpu":
        gpus.append(g[0].strip())
    elif name == "train":
        s.steps, s.iterations, s.train_time_ms, s.step_avg_ms = int(g[0]), int(g[1]), float(g[3]), float(g[4])
        s.train_curve.append((int(g[0]), float(g[3]), float(g[2])))
    elif name == "val":
        s.steps, s.iterations, s.val_loss, s.val_bpb = int(g[0]), int(g[1]), float(g[2]), float(g[3])
        s.train_time_ms, s.step_avg_ms = float(g[4]), (float(g[5]) if int(g[0]) else s.step_avg_ms)
        s.val_curve.append((int(g[0]), float(g[4]), float(g[3])))
    elif name == "peak":
        s.peak_alloc_mib = int(g[0])
    elif name == "code":
        s.code_bytes = int(g[0])
    elif name == "model":
        s.model_bytes = int(g[0])
    elif name == "total":
        s.export, s.artifact_bytes = g[0], int(g[1])
    elif name == "eval_only":
        s.state = "eval-only"
    elif name == "targets":  # the sliding-window line comes later and wins
        s.scored_targets = int(g[0])
    elif name == "roundtrip":
        s.eval_time_ms = float(g[2])
    elif name == "exact":
        s.roundtrip_val_loss, s.roundtrip_val_bpb = float(g[0]), float(g[1])
        if s.state == "truncated":
            s.state = "complete"


RECORD_LOGS = {"train.log": 1337, "train_seed1338.log": 1338, "train_seed1339.log": 1339}  # a record folder's, by seed


def record_log_problem(path: Path, script: Path, seed: int) -> str | None:
    """Why path is not a finished run of seed SEED by script (its log begins with the source it ran), or None."""
    run = parse_log(path)
    if (run.state, run.seed) != ("complete", seed):
        return f"{path} is a {run.state} run of seed {run.seed}, not a finished run of seed {seed}"
    ran = script.read_text(encoding="utf-8") + "\n" + "=" * 100 + "\n"  # train_gpt.py logs its source, then a rule
    if not Path(path).read_text(encoding="utf-8").startswith(ran):
        return f"{path} ran another train_gpt.py than {script}: run it again"
    return None


# ---- statistics -----------------------------------------------------------------------------

def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry otherwise
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@dataclass
class TTest:
    n: int
    mean_bpb: float
    sd_bpb: float
    improvement_bpb: float
    improvement_nats: float
    threshold_bpb: float
    t: float
    df: int
    p: float
    passed: bool


def significance(bpbs: list[float], tokens_per_byte: float, record_bpb: float, min_gain_nats: float,
                 alpha: float) -> TTest:
    """One-sided one-sample t-test of the challenge rule: the runs beat the record by at least
    min_gain_nats per token. The gain is tested in bpb; min_gain_nats converts with the logs' own
    tokens per byte (bpb = nats / ln 2 * tokens / bytes)."""
    n = len(bpbs)
    mean, sd = statistics.fmean(bpbs), statistics.stdev(bpbs)
    threshold = min_gain_nats / LN2 * tokens_per_byte
    gain = record_bpb - mean
    if sd > 0:
        t = (gain - threshold) / (sd / math.sqrt(n))
    else:  # identical scores: certain, but only a strict excess over the threshold passes
        t = math.inf if gain > threshold else -math.inf
    p = student_t_sf(t, n - 1)
    return TTest(n, mean, sd, gain, gain * LN2 / tokens_per_byte, threshold, t, n - 1, p, p < alpha)


# ---- commands -------------------------------------------------------------------------------

def fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def run_logs(paths: list[Path]) -> list[RunSummary]:
    """The runs of the logs among paths; other files that live beside logs (a queue's console.txt,
    build logs) are skipped, with one line on stderr."""
    runs = [parse_log(p) for p in paths]
    others = [r.path for r in runs if not r.is_log]
    if len(others) == len(runs):
        raise SystemExit("error: none of the files is a train_gpt.py log (no world_size: or hyperparameters: line)")
    if others:
        print(f"skipped {len(others)} files that are not train_gpt.py logs: {', '.join(others)}", file=sys.stderr)
    return [r for r in runs if r.is_log]


def cmd_summarize(args) -> int:
    runs = run_logs(args.logs)
    header = ["run_id", "state", "seed", "world", "hardware", "steps", "step_avg_ms", "val_loss", "val_bpb",
              "rt_val_loss", "rt_val_bpb", "final_eval_s", "artifact_bytes", "peak_MiB"]
    rows = [[r.run_id, r.state, fmt(r.seed), fmt(r.world_size), fmt(r.hardware),
             f"{fmt(r.steps)}/{fmt(r.iterations)}", fmt(r.step_avg_ms, ".2f"), fmt(r.val_loss, ".4f"),
             fmt(r.val_bpb, ".4f"), fmt(r.roundtrip_val_loss, ".8f"), fmt(r.roundtrip_val_bpb, ".8f"),
             fmt(r.eval_time_ms and r.eval_time_ms / 1000, ".1f"), fmt(r.artifact_bytes, ","),
             fmt(r.peak_alloc_mib)] for r in runs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def complete_runs(paths: list[Path]) -> list[RunSummary]:
    runs = [parse_log(p) for p in paths]
    for r in runs:
        if not r.is_log:
            raise SystemExit(f"error: {r.path} is not a train_gpt.py log (no world_size: or hyperparameters: line); "
                             f"give the runs' logs/<RUN_ID>.txt")
    bad = [f"{r.path} ({r.state})" for r in runs if r.roundtrip_val_bpb is None]
    if bad:
        raise SystemExit(f"error: no final score in {', '.join(bad)}; only finished runs count")
    return runs


def cmd_ttest(args) -> int:
    runs = complete_runs(args.logs)
    if any(r.state == "eval-only" for r in runs):
        raise SystemExit("error: an EVAL_ARTIFACT log re-scores a run; give each training run's own log once")
    seen = [(r.run_id, r.seed) for r in runs]
    if len(set(r.run_id for r in runs)) < len(runs) or len(set(r.seed for r in runs)) < len(runs):
        raise SystemExit(f"error: each run must count once, with its own seed; got (run_id, seed) {seen}")
    if len(runs) < 2:
        raise SystemExit("error: the t-test needs at least 2 logs")
    tpb = statistics.fmean(r.tokens_per_byte for r in runs)
    res = significance([r.roundtrip_val_bpb for r in runs], tpb, args.record_bpb, args.min_gain_nats, args.alpha)
    print(f"runs:{res.n} mean_val_bpb:{res.mean_bpb:.6f} sd:{res.sd_bpb:.6f} record_val_bpb:{args.record_bpb}")
    print(f"improvement:{res.improvement_bpb:.6f} bpb = {res.improvement_nats:.6f} nats "
          f"(tokens_per_byte {tpb:.4f}); required {args.min_gain_nats} nats = {res.threshold_bpb:.6f} bpb")
    print(f"t:{res.t:.4f} df:{res.df} p:{res.p:.6g} alpha:{args.alpha} -> {'PASS' if res.passed else 'FAIL'}")
    return 0 if res.passed else 1


def submission_record(logs: list[Path], author: str, github_id: str, name: str, blurb: str,
                      date: str | None = None) -> dict:
    """submission.json's fields, as the seed record has them: the mean score over the logs, the largest artifact."""
    runs = complete_runs(logs)
    if any(r.artifact_bytes is None or r.code_bytes is None for r in runs):
        raise SystemExit("error: a log lacks its size lines (Code size / Total submission size int<bits>+<compressor>)")
    return dict(author=author, github_id=github_id, name=name, blurb=blurb,
                date=date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                val_loss=round(statistics.fmean(r.roundtrip_val_loss for r in runs), 8),
                val_bpb=round(statistics.fmean(r.roundtrip_val_bpb for r in runs), 8),
                bytes_total=max(r.artifact_bytes for r in runs), bytes_code=max(r.code_bytes for r in runs))


def cmd_submission(args) -> int:
    print(json.dumps(submission_record(args.logs, args.author, args.github_id, args.name, args.blurb, args.date),
                     indent=2))
    return 0


def cmd_size(args) -> int:
    if args.log:
        run = parse_log(args.log)
        if run.artifact_bytes is None:
            raise SystemExit(f"error: {args.log} has no 'Total submission size int<bits>+<compressor>' line")
        code, model, total = run.code_bytes, run.model_bytes, run.artifact_bytes
    else:
        if not (args.code and args.model):
            raise SystemExit("error: give a log, or both --code and --model")
        code, model = args.code.stat().st_size, args.model.stat().st_size
        total = code + model
    margin = ARTIFACT_LIMIT_BYTES - total
    print(f"code:{fmt(code, ',')} model:{fmt(model, ',')} total:{total:,} limit:{ARTIFACT_LIMIT_BYTES:,} "
          f"margin:{margin:,} -> {'OK' if margin >= 0 else 'OVER'}")
    return 0 if margin >= 0 else 1


def cmd_predict_size(args) -> int:
    """The artifact grows as training goes on (the weights' entropy rises), and more slowly the
    longer it goes. Runs of one configuration at several lengths give bytes against log(tokens);
    the line through the two longest runs, extended to FACTOR times the longest run's tokens,
    predicts the size after a longer run (the steepest line between two neighbours is the
    cautious bound)."""
    runs = sorted(complete_runs(args.logs), key=lambda r: r.steps or 0)
    if len(runs) < 2 or any(r.artifact_bytes is None or not r.steps or not r.train_batch_tokens for r in runs):
        raise SystemExit("error: predict-size needs at least 2 finished training logs with steps, batch and size lines")
    if len({r.export for r in runs}) > 1:  # sizes of two exports (an lzma and a rans artifact) are not one curve
        raise SystemExit(f"error: predict-size needs runs of one export; got {sorted({r.export for r in runs})}")
    points = [(math.log(r.steps * r.train_batch_tokens), r.artifact_bytes) for r in runs]
    if len({x for x, _ in points}) < len(points):
        raise SystemExit("error: two logs trained on the same number of tokens; give runs of different lengths")
    for r in runs:
        print(f"{r.run_id}: steps:{r.steps} tokens:{r.steps * r.train_batch_tokens:,} bytes:{r.artifact_bytes:,}")
    slopes = [(b1 - b0) / (x1 - x0) for (x0, b0), (x1, b1) in zip(points, points[1:])]
    target = points[-1][0] + math.log(args.factor)
    for what, slope in (("predicted", slopes[-1]), ("cautious", max(slopes))):
        size = round(points[-1][1] + slope * (target - points[-1][0]))
        print(f"{what}: {slope * LN2:+,.0f} bytes per doubling of tokens -> {size:,} bytes at "
              f"{args.factor}x the longest run's tokens; margin:{ARTIFACT_LIMIT_BYTES - size:,}")
    return 0


def cmd_compare(args) -> int:
    """Paired differences, OTHER minus BASE, for logs given as BASE OTHER [BASE OTHER ...] (the same
    seed in each pair), then their mean: what a queue's README reports for a switch."""
    if len(args.logs) % 2:
        raise SystemExit("error: compare takes pairs of logs: BASE OTHER [BASE OTHER ...]")
    runs = complete_runs(args.logs)
    fields = [("pre-quant val_bpb", "val_bpb", ".4f"), ("final val_bpb", "roundtrip_val_bpb", ".5f"),
              ("artifact bytes", "artifact_bytes", ",.0f"), ("step_avg ms", "step_avg_ms", ".2f")]
    print("| base | other | " + " | ".join(f"Δ {name}" for name, _, _ in fields) + " |")
    print("|" + "---|" * (2 + len(fields)))
    deltas = []
    for base, other in zip(runs[::2], runs[1::2]):
        if base.seed != other.seed:
            raise SystemExit(f"error: {base.run_id} (seed {base.seed}) and {other.run_id} (seed {other.seed}) are not "
                             f"a pair: give BASE OTHER pairs of the same seed")
        pair = [None if getattr(base, k) is None or getattr(other, k) is None else getattr(other, k) - getattr(base, k)
                for _, k, _ in fields]
        deltas.append(pair)
        print(f"| {base.run_id} | {other.run_id} | " + " | ".join(fmt(d, "+" + f) for d, (_, _, f) in zip(pair, fields))
              + " |")
    means = [[d[i] for d in deltas if d[i] is not None] for i in range(len(fields))]
    print(f"| mean of {len(deltas)} | | " + " | ".join(fmt(sum(m) / len(m) if m else None, "+" + f)
                                                     for m, (_, _, f) in zip(means, fields)) + " |")
    return 0


# The seed's step on 8xH100 against one H200 (SPEC.md: 71.47 ms; 391 ms measured here), and FineWeb's validation
# split at sp8192 (the challenge's 40.5 M tokens): what a one-GPU run says of the record run.
SEED_8XH100_MS, SEED_1XH200_MS, FINEWEB_VAL_TOKENS = 71.47, 391.0, 40_500_000


def cmd_estimate(args) -> int:
    """The record run from a one-GPU log: its step time scaled as the seed's step scales from one H200 to 8xH100,
    the steps that fit in the 600 s cap, and the final score's evaluation time on FineWeb's validation split, its
    time per target scaled alike (8 H100s do 5.47 times the work of one H200, not 8 times)."""
    r = complete_runs([args.log])[0]
    if r.world_size != 1 or not r.step_avg_ms or not r.eval_time_ms or not r.scored_targets:
        raise SystemExit(f"error: {args.log} is not a finished one-GPU training log with its step time, final "
                         f"evaluation time and scored targets")
    step_ms = r.step_avg_ms * SEED_8XH100_MS / SEED_1XH200_MS
    eval_s = r.eval_time_ms / 1000 * args.val_tokens / r.scored_targets * SEED_8XH100_MS / SEED_1XH200_MS
    print(f"{r.run_id}: step_avg:{r.step_avg_ms:.2f}ms on one GPU -> 8xH100 step:{step_ms:.1f}ms "
          f"steps_in_600s:{int(600_000 / step_ms):,} (the seed: {int(600_000 / SEED_8XH100_MS):,}); final eval "
          f"{r.eval_time_ms / 1000:.1f}s for {r.scored_targets:,} targets -> {eval_s:.0f}s for {args.val_tokens:,} "
          f"on 8 GPUs ({'within' if eval_s <= 600 else 'OVER'} the 600 s evaluation limit)")
    return 0


def cmd_plot(args) -> int:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plotting needs matplotlib (pip install matplotlib)") from None
    runs = run_logs(args.logs)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):  # one colour per run in all four panels, whichever curves it has
        style = dict(label=f"{r.run_id} (seed {fmt(r.seed)})", color=colours[i % len(colours)])
        for col, x_of in enumerate((lambda p: p[0], lambda p: p[1] / 1000)):
            if r.train_curve:
                axes[0][col].plot([x_of(p) for p in r.train_curve], [p[2] for p in r.train_curve], **style)
            if r.val_curve:
                axes[1][col].plot([x_of(p) for p in r.val_curve], [p[2] for p in r.val_curve], "o-", **style)
    for row, what in enumerate(("train_loss (nats)", "val_bpb")):
        for col, x_label in enumerate(("step", "training time (s)")):
            axes[row][col].set(xlabel=x_label, ylabel=what)
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="one table row per log; unfinished logs are listed with their state, "
                                         "files that are not logs skipped")
    s.add_argument("logs", nargs="+", type=Path)
    s.set_defaults(func=cmd_summarize)
    s = sub.add_parser("ttest", help="one-sided t-test: do the runs beat the record by at least 0.005 nats?")
    s.add_argument("logs", nargs="+", type=Path)
    s.add_argument("--record-bpb", type=float, required=True, help="the current record's val_bpb")
    s.add_argument("--min-gain-nats", type=float, default=0.005)
    s.add_argument("--alpha", type=float, default=0.01)
    s.set_defaults(func=cmd_ttest)
    s = sub.add_parser("submission", help="submission.json (mean score over the logs, largest artifact)")
    s.add_argument("logs", nargs="+", type=Path)
    for name in ("--author", "--github-id", "--name", "--blurb"):
        s.add_argument(name, required=True)
    s.add_argument("--date", help="ISO 8601 UTC; default: now")
    s.set_defaults(func=cmd_submission)
    s = sub.add_parser("compare", help="paired differences of runs, OTHER minus BASE, and their mean")
    s.add_argument("logs", nargs="+", type=Path, help="BASE OTHER [BASE OTHER ...]")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("estimate", help="the record run on 8xH100 (step, steps in 600 s, final eval time), "
                                        "from a one-GPU log")
    s.add_argument("log", type=Path)
    s.add_argument("--val-tokens", type=int, default=FINEWEB_VAL_TOKENS, help="tokens of the validation split")
    s.set_defaults(func=cmd_estimate)
    s = sub.add_parser("plot", help="train loss and val_bpb against step and time, one PNG")
    s.add_argument("logs", nargs="+", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_plot)
    s = sub.add_parser("size", help="code + compressed model against 16,000,000 bytes")
    s.add_argument("log", nargs="?", type=Path)
    s.add_argument("--code", type=Path)
    s.add_argument("--model", type=Path)
    s.set_defaults(func=cmd_size)
    s = sub.add_parser("predict-size", help="the artifact after a longer run, from runs of one configuration")
    s.add_argument("logs", nargs="+", type=Path)
    s.add_argument("--factor", type=float, required=True, help="target tokens / the longest log's tokens")
    s.set_defaults(func=cmd_predict_size)
    args = p.parse_args(argv)
    paths = (getattr(args, "logs", None) or []) + [getattr(args, k, None) for k in ("log", "code", "model")]
    for path in paths:
        if path is not None and not path.is_file():
            p.error(f"{path} does not exist")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
