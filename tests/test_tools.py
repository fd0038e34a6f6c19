"""tools/: the speed benchmark and the record-submission tools."""

from __future__ import annotations

import io
import json
import lzma
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_gpt
from conftest import ROOT, SEED_SETTINGS, run_train, tiny_env

sys.path.insert(0, str(ROOT / "tools"))
import benchmark  # noqa: E402
import records  # noqa: E402


def test_flops_per_token_counts_every_matrix_and_causal_attention():
    args = train_gpt.Hyperparameters(SEED_SETTINGS)
    model = train_gpt.build_model(args, torch.device("cpu"))
    matrices = sum(p.numel() for n, p in model.blocks.named_parameters() if p.ndim == 2 and "resid_mix" not in n)
    matrices += model.tok_emb.weight.numel()  # the tied output layer
    attention = 6 * args.num_layers * args.train_seq_len * args.model_dim
    assert benchmark.flops_per_token(args) == 6 * matrices + attention == 215_482_368


def requantize(cwd, raw, out, **settings) -> subprocess.CompletedProcess:
    env = dict(PATH="/usr/bin:/bin", **settings)
    return subprocess.run([sys.executable, str(ROOT / "tools" / "requantize.py"), str(raw), str(out)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_requantize_writes_what_the_export_writes(first_run, dataset, tokenizer_path, tmp_path):
    cwd, _ = first_run
    raw = cwd / "artifacts" / "first_model.pt"
    again = requantize(tmp_path, raw, tmp_path / "again.ptz", QUANT_BITS="8", QUANT_CLIP_SIGMAS="6", QUANT_GPTQ="0",
                       COMPRESSOR="zlib", TTT_CHUNK_TOKENS="100")  # not a valid TTT chunk, but an export does not evaluate
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.ptz").read_bytes() == (cwd / "artifacts" / "first_model.int8.ptz").read_bytes()
    code = len((ROOT / "train_gpt.py").read_bytes())
    model = (tmp_path / "again.ptz").stat().st_size
    assert f"requantize: int8+zlib clip_sigmas:6.0 gptq:False embed_bits:8 embed_clip_sigmas:14.0 " \
           f"model_bytes:{model} code_bytes:{code} " \
           f"total_bytes:{model + code} fits:True out:{tmp_path / 'again.ptz'}" in again.stdout
    int6 = requantize(tmp_path, raw, tmp_path / "q6.ptz", QUANT_BITS="6", QUANT_CLIP_SIGMAS="4", COMPRESSOR="lzma",
                      EMBED_BITS="7", QUANT_GPTQ="0")
    assert int6.returncode == 0 and "requantize: int6+lzma clip_sigmas:4.0 " in int6.stdout, int6.stderr
    assert artifact_object(tmp_path / "q6.ptz")["qmeta"]["tok_emb.weight"] == dict(scheme="per_row", axis=0, bits=7)
    scored = run_train(tmp_path, tiny_env(dataset, tokenizer_path, RUN_ID="q6", EVAL_ARTIFACT=str(tmp_path / "q6.ptz")))
    assert scored.returncode == 0 and re.search(r"^final_int6_lzma_roundtrip_exact ", scored.stdout, re.M), scored.stderr
    # Never over an existing file; bad settings and unreadable weights are one-line errors.
    for out, settings, message in ((tmp_path / "q6.ptz", {}, "already exists"),
                                   (tmp_path / "x.ptz", dict(QUANT_BITS="4"), "QUANT_BITS=4 must be in 5..8"),
                                   (tmp_path / "y.ptz", {}, "cannot read weights")):
        bad = requantize(tmp_path, tmp_path / "q6.ptz" if "read" in message else raw, out, **settings)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def artifact_object(path) -> dict:
    return torch.load(io.BytesIO(lzma.decompress(path.read_bytes())))


@pytest.mark.slow
def test_requantize_rounds_by_gptq_with_hessians_from_training_batches(first_run, dataset, tokenizer_path, tmp_path):
    cwd, _ = first_run
    raw = cwd / "artifacts" / "first_model.pt"
    env = tiny_env(dataset, tokenizer_path, QUANT_BITS="6", QUANT_CLIP_SIGMAS="6", COMPRESSOR="lzma")  # its shapes, data
    gptq = requantize(tmp_path, raw, tmp_path / "gptq.ptz", **dict(env, QUANT_GPTQ="1"))
    plain = requantize(tmp_path, raw, tmp_path / "plain.ptz", **env)
    assert gptq.returncode == 0 and "requantize: int6+lzma clip_sigmas:6.0 gptq:True embed_bits:8 " in gptq.stdout, \
        gptq.stderr
    assert plain.returncode == 0 and " gptq:False " in plain.stdout, plain.stderr
    assert train_gpt.load_artifact(str(tmp_path / "gptq.ptz"))[1:] == (6, "lzma")
    a, b = artifact_object(tmp_path / "gptq.ptz"), artifact_object(tmp_path / "plain.ptz")
    intn = [name for name, meta in a["qmeta"].items() if meta.get("bits") == 6]
    assert intn == ["blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight", "blocks.1.mlp.fc.weight",
                    "blocks.1.mlp.proj.weight"]  # at MODEL_DIM=192 the attention matrices stay fp16
    assert all(torch.equal(a["scales"][k], b["scales"][k]) for k in a["scales"]), "the same grid"
    assert all(torch.equal(a["quantized"][k], b["quantized"][k]) for k in a["quantized"] if k not in intn)
    # On the tokens it calibrated on, GPTQ moves each layer's output less: tr(E H E^T), E = W - Wq.
    args = train_gpt.Hyperparameters(env)
    model = train_gpt.build_model(args, torch.device("cpu"))
    model.load_state_dict(torch.load(raw))
    loader = train_gpt.DistributedTokenLoader(sorted(dataset.glob("fineweb_train_*.bin")), 512, 0, 1,
                                              torch.device("cpu"))
    hessians = train_gpt.collect_hessians(model, loader, args, grad_accum_steps=8)
    weights = model.state_dict()
    for name in intn:
        q, scale = a["quantized"][name], a["scales"][name].float()[:, None]
        assert q.abs().max() <= 31 and not torch.equal(q, b["quantized"][name]), name
        error = [torch.trace(e @ hessians[name] @ e.T) for e in
                 (weights[name] - obj["quantized"][name].float() * scale for obj in (a, b))]
        assert error[0] < 0.5 * error[1], (name, error)
    # Bad input: one line, and no file.
    no_data = {k: v for k, v in env.items() if k != "DATA_PATH"}
    for settings, message in ((no_data, "DATA_PATH=./data/datasets/fineweb10B_sp8192 is not a folder"),
                              (dict(env, QUANT_BITS="8"), "QUANT_GPTQ=1 needs QUANT_BITS < 8"),
                              (dict(env, MODEL_DIM="128"), "use the shape settings of the run that made it")):
        bad = requantize(tmp_path, raw, tmp_path / "bad.ptz", **dict(settings, QUANT_GPTQ="1"))
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.ptz").exists()


@pytest.mark.slow
def test_benchmark_runs_the_training_step_on_synthetic_tokens(tmp_path):
    env = dict(COMPILE="0", NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2", VOCAB_SIZE="512",
               TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="1024", VAL_BATCH_SIZE="4096", WARMUP_STEPS="1",
               BENCH_STEPS="2", PATH="/usr/bin:/bin")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    line = re.search(r"^benchmark: step_avg:([\d.]+)ms tokens_per_s:(\d+) model_tflops_per_s:([\d.]+) mfu:([\d.]+) "
                     r"step_min:[\d.]+ms step_max:[\d.]+ms steps:2 .* world_size:1 hardware:cpu", run.stdout, re.M)
    assert line, run.stdout
    step_ms, tokens_per_s = float(line[1]), int(line[2])
    assert tokens_per_s == pytest.approx(1024 / (step_ms / 1000), rel=1e-3)  # step_avg is rounded to 0.01 ms
    assert not (tmp_path / "logs").exists(), "the benchmark writes no run files"


# ---- tools/records.py -------------------------------------------------------------------------

@pytest.mark.parametrize("t", [-3.0, -0.5, 0.0, 0.1, 1.0, 2.0, 7.5, 40.0])
def test_student_t_tail_against_closed_forms(t):
    assert records.student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert records.student_t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("df, t_99", [(1, 31.821), (2, 6.965), (3, 4.541), (4, 3.747), (9, 2.821), (30, 2.457)])
def test_student_t_tail_against_the_one_sided_99_percent_table(df, t_99):
    assert records.student_t_sf(t_99, df) == pytest.approx(0.01, rel=1e-3)  # the table rounds t to 3 decimals


def write_log(path, seed: int, rt_loss: float, rt_bpb: float, total: int = 15_900_000, code: int = 50_000,
              finished: bool = True, export: str = "int8+zlib", steps: int = 8394) -> None:
    lines = [f"hyperparameters: data_path=x run_id={path.stem} seed={seed} train_batch_tokens=393216", "hardware:NVIDIA_H100_80GB_HBM3 count:8",
             "world_size:8 grad_accum_steps:1", f"seed:{seed}",
             "step:0/20000 val_loss:6.9357 val_bpb:4.1077 train_time:0ms step_avg:0.01ms",
             "step:1/20000 train_loss:6.9357 train_time:70ms step_avg:70.00ms",
             "step:200/20000 train_loss:3.1000 train_time:14000ms step_avg:70.00ms"]
    if finished:
        lines += [f"step:{steps}/20000 val_loss:2.0227 val_bpb:1.1980 train_time:599921ms step_avg:71.47ms",
                  "peak memory allocated: 7748 MiB reserved: 8070 MiB", f"Code size: {code} bytes",
                  f"Serialized model {export}: {total - code} bytes (payload:1 raw_torch:1 payload_ratio:3.91x)",
                  f"Total submission size {export}: {total} bytes",
                  f"final_{export.replace('+', '_')}_roundtrip val_loss:{rt_loss:.4f} val_bpb:{rt_bpb:.4f} "
                  f"eval_time:2100ms",
                  f"final_{export.replace('+', '_')}_roundtrip_exact val_loss:{rt_loss:.8f} val_bpb:{rt_bpb:.8f}"]
    path.write_text("\n".join(lines) + "\n")


TPB = 0.4095  # tokens per byte of SP1024 FineWeb


def three_logs(folder, bpbs):
    folder.mkdir(exist_ok=True)
    paths = []
    for seed, bpb in zip((1337, 1338, 1339), bpbs):
        path = folder / f"run{seed}.txt"
        write_log(path, seed, bpb * math.log(2) / TPB, bpb)
        paths.append(path)
    return paths


def test_ttest_passes_a_clear_gain_and_fails_a_small_one(tmp_path, capsys):
    record = 1.2014
    good = three_logs(tmp_path / "good", [1.1900, 1.1905, 1.1895])
    assert records.main(["ttest", "--record-bpb", str(record), *map(str, good)]) == 0
    out = capsys.readouterr().out
    threshold = 0.005 / math.log(2) * TPB  # 0.00295 bpb
    t = (record - 1.19 - threshold) / (0.0005 / math.sqrt(3))
    assert f"t:{t:.4f} df:2" in out and "PASS" in out and f"{threshold:.6f} bpb" in out
    assert f"p:{records.student_t_sf(t, 2):.6g}" in out
    small = three_logs(tmp_path / "small", [1.1990, 1.1985, 1.1995])  # 0.0024 bpb better: under 0.005 nats
    assert records.main(["ttest", "--record-bpb", str(record), *map(str, small)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_ttest_refuses_unfinished_runs(tmp_path):
    write_log(tmp_path / "a.txt", 1, 2.0, 1.19)
    write_log(tmp_path / "b.txt", 2, 2.0, 1.19, finished=False)
    with pytest.raises(SystemExit, match=r"no final score in .*b\.txt \(truncated\)"):
        records.main(["ttest", "--record-bpb", "1.2", str(tmp_path / "a.txt"), str(tmp_path / "b.txt")])


def test_submission_json_in_the_seed_shape(tmp_path, capsys):
    logs = three_logs(tmp_path, [1.19, 1.20, 1.21])
    assert records.main(["submission", "--author", "A", "--github-id", "a", "--name", "N", "--blurb", "B",
                         "--date", "2026-11-29T00:00:00Z", *map(str, logs)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert list(record) == ["author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total",
                            "bytes_code"]
    assert record["val_bpb"] == pytest.approx(1.20) and record["bytes_total"] == 15_900_000
    assert record["val_loss"] == pytest.approx(1.20 * math.log(2) / TPB, abs=1e-7) and record["bytes_code"] == 50_000


def test_record_folder_writes_submission_json_from_three_logs_of_its_script(tmp_path):
    """tools/record_folder.py: checks the logs (seed, finished, the folder's train_gpt.py), writes submission.json
    with the hardware, PyTorch and data in its name and blurb, then runs the t-test against the seed environment."""
    source = "print('a record script')\n"
    (tmp_path / "train_gpt.py").write_text(source)
    for name, seed, bpb in (("train.log", 1337, 1.19), ("train_seed1338.log", 1338, 1.20),
                            ("train_seed1339.log", 1339, 1.21)):
        write_log(tmp_path / name, seed, bpb * math.log(2) / TPB, bpb)
        log = (tmp_path / name).read_text()
        (tmp_path / name).write_text(source + "\n" + "=" * 100 + "\nRunning PyTorch 2.11.0+cu130\n" + log)
    write_log(tmp_path / "seed_env.txt", 1337, 1.35 * math.log(2) / TPB, 1.35)
    env = {**os.environ, "SEED_LOG": str(tmp_path / "seed_env.txt"), "AUTHOR": "A", "GITHUB_ID": "a"}

    def record_folder():
        return subprocess.run([sys.executable, str(ROOT / "tools" / "record_folder.py"), str(tmp_path)], env=env,
                              capture_output=True, text=True)

    done = record_folder()
    assert done.returncode == 0 and "-> PASS" in done.stdout, done.stdout + done.stderr
    record = json.loads((tmp_path / "submission.json").read_text())
    assert (record["author"], record["github_id"], record["val_bpb"]) == ("A", "a", pytest.approx(1.20))
    assert record["name"].endswith("on 8x NVIDIA H100 80GB HBM3") and record["bytes_total"] == 15_900_000
    assert "PyTorch 2.11.0+cu130" in record["blurb"] and "not FineWeb" in record["blurb"]  # data_path=x
    (tmp_path / "train_gpt.py").write_text(source + "# changed\n")
    done = record_folder()
    assert done.returncode == 2 and done.stderr.strip().endswith("run it again"), done.stderr
    (tmp_path / "train_gpt.py").write_text(source)
    (tmp_path / "train_seed1339.log").write_text((tmp_path / "train_seed1338.log").read_text())  # in 1339's place
    done = record_folder()
    assert done.returncode == 2 and "is a complete run of seed 1338, not a finished run of seed 1339" in done.stderr
    (tmp_path / "train_seed1338.log").unlink()
    done = record_folder()
    assert done.returncode == 2 and done.stderr.startswith("error: no ") and "train_seed1338.log" in done.stderr
    del env["GITHUB_ID"]
    done = record_folder()
    assert done.returncode == 2 and done.stderr.startswith("error: set AUTHOR and GITHUB_ID")


def test_artifact_entropy_prices_each_coding_of_a_real_artifact(tmp_path, capsys):
    """tools/artifact_entropy.py on an artifact train_gpt.py's coder wrote: exact order-0 sizes, and the adaptive
    code finds what one table per tensor misses (two unlike rows), not what is not there (rows alike)."""
    import artifact_entropy
    assert artifact_entropy.entropy_bits(np.array([0, 0, 1, 1, 2, 3, 4, 5])) == pytest.approx(2.5 * 8)
    counts = torch.tensor([[3.0, 1.0]])  # Dirichlet(1, 1): 1 / C(n + 1, 1) / C(n, c) = 1/5 * 1/4
    assert float(artifact_entropy.adaptive_bits(counts, torch.ones(1, 2))) == pytest.approx(math.log2(20))
    rng = np.random.default_rng(0)
    unlike = np.stack([np.zeros(4096, np.int64), rng.integers(-8, 8, 4096)])  # a constant row and a uniform one
    alike = rng.integers(-8, 8, (64, 64))
    quantized = {"unlike": torch.from_numpy(unlike).to(torch.int8),
                 "blocks.0.alike.weight": torch.from_numpy(alike).to(torch.int8)}
    blob, _ = train_gpt.serialize_artifact({"quantized": quantized}, "rans")
    (tmp_path / "a.ptz").write_bytes(blob)
    sizes = artifact_entropy.sizes_by_kind(artifact_entropy.quantized_tensors(tmp_path / "a.ptz"))
    n, tensor, row, column = sizes["unlike"]
    assert n == 8192 and tensor == pytest.approx(artifact_entropy.entropy_bits(unlike) / 8)
    assert row == pytest.approx(4096 * 4 / 8, rel=0.02)  # the uniform row's 4 bits a value; the constant one ~0
    n, tensor, row, column = sizes["alike"]  # "blocks.0." and ".weight" dropped: a kind over all layers
    assert n == 4096 and tensor < row and tensor < column  # learning 64 tables costs more than it finds
    assert artifact_entropy.main([str(tmp_path / "a.ptz")]) == 0
    assert "| all | 12,288 |" in capsys.readouterr().out
    assert artifact_entropy.main([str(tmp_path / "missing.ptz")]) == 2 and "error: usage" in capsys.readouterr().err
    (tmp_path / "bad.ptz").write_bytes(b"not an artifact")
    assert artifact_entropy.main([str(tmp_path / "bad.ptz")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read artifact ")


def test_logs_of_any_export_parse_alike(tmp_path):
    for export in ("int8+zlib", "int6+lzma", "int7+rans"):
        write_log(tmp_path / f"{export}.txt", 1, 2.01, 1.19, total=15_000_000, export=export)
        run = records.parse_log(tmp_path / f"{export}.txt")
        assert run.state == "complete" and (run.roundtrip_val_loss, run.roundtrip_val_bpb) == (2.01, 1.19), export
        assert run.export == export
        assert (run.artifact_bytes, run.model_bytes, run.code_bytes) == (15_000_000, 14_950_000, 50_000), export


def test_size_check(tmp_path, capsys):
    write_log(tmp_path / "ok.txt", 1, 2.0, 1.19, total=15_999_000)
    assert records.main(["size", str(tmp_path / "ok.txt")]) == 0
    assert "margin:1,000 -> OK" in capsys.readouterr().out
    (tmp_path / "code.py").write_bytes(b"x" * 1000)
    (tmp_path / "m.ptz").write_bytes(b"y" * 15_999_001)
    assert records.main(["size", "--code", str(tmp_path / "code.py"), "--model", str(tmp_path / "m.ptz")]) == 1
    assert "margin:-1 -> OVER" in capsys.readouterr().out


def test_predict_size_extends_bytes_against_log_tokens(tmp_path, capsys):
    for steps, total in ((400, 15_150_000), (100, 15_000_000), (200, 15_100_000)):  # +100 KB, then +50 KB a doubling
        write_log(tmp_path / f"s{steps}.txt", 1, 2.0, 1.19, total=total, steps=steps)
    assert records.main(["predict-size", "--factor", "4", *map(str, tmp_path.glob("s*.txt"))]) == 0
    out = capsys.readouterr().out
    assert f"s100: steps:100 tokens:{100 * 393216:,} bytes:15,000,000" in out.splitlines()[0]
    assert "predicted: +50,000 bytes per doubling of tokens -> 15,250,000 bytes at 4.0x the longest run's tokens; " \
           "margin:750,000" in out
    assert "cautious: +100,000 bytes per doubling of tokens -> 15,350,000 bytes" in out
    with pytest.raises(SystemExit, match="different lengths"):
        records.main(["predict-size", "--factor", "4", str(tmp_path / "s100.txt"), str(tmp_path / "s100.txt")])
    write_log(tmp_path / "rans800.txt", 1, 2.0, 1.19, total=14_500_000, steps=800, export="int6+rans")
    with pytest.raises(SystemExit, match=r"one export; got \['int6\+rans', 'int8\+zlib'\]"):
        records.main(["predict-size", "--factor", "4", *map(str, tmp_path.glob("*.txt"))])


@pytest.mark.slow
def test_summarize_real_runs_and_lists_broken_ones(first_run, tmp_path, capsys):
    cwd, _ = first_run
    log = cwd / "logs" / "first.txt"
    crashed = tmp_path / "crashed.txt"
    crashed.write_text(log.read_text().split("\npeak memory allocated")[0])  # killed after training
    assert records.main(["summarize", str(log), str(crashed)]) == 0
    complete, broken = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| first")]
    run = records.parse_log(log)
    assert run.state == "complete" and run.seed == 1 and run.world_size == 1 and run.hardware == "cpu"
    assert run.steps == run.iterations == 12 and run.artifact_bytes == (cwd / "artifacts" / "first_model.int8.ptz"
                                                                         ).stat().st_size + run.code_bytes
    assert f"{run.roundtrip_val_bpb:.8f}" in complete and "| complete |" in complete
    assert f"| {run.eval_time_ms / 1000:.1f} | {run.artifact_bytes:,} |" in complete  # the final score's time
    assert "| truncated |" in broken and "| 12/12 |" in broken and broken.endswith("| - | - | - | - |")


def test_committed_gpu_logs_parse():
    results = ROOT / "results" / "p180_v2"
    base, feat = records.parse_log(results / "base_s1337.txt"), records.parse_log(results / "feat_s1337.txt")
    assert (base.state, base.steps, base.val_bpb, base.roundtrip_val_bpb) == ("complete", 607, 1.4668, 1.45983384)
    assert base.artifact_bytes == 14_114_949 and base.hardware == "NVIDIA_H200 x1"
    assert (feat.steps, feat.val_bpb, feat.roundtrip_val_bpb) == (587, 1.4826, 1.48445231)
    ttt = records.parse_log(ROOT / "results" / "p180_v5" / "def_s1338_ttt3.txt")  # an artifact scored with TTT
    assert (ttt.state, ttt.roundtrip_val_bpb, ttt.eval_time_ms) == ("eval-only", 1.40433498, 21433.0)


@pytest.mark.slow
def test_plot_writes_a_png(first_run, tmp_path):
    pytest.importorskip("matplotlib", reason="plot needs matplotlib")
    cwd, _ = first_run
    out = tmp_path / "curves.png"
    assert records.main(["plot", "--out", str(out), str(cwd / "logs" / "first.txt")]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


NOT_LOGS = [ROOT / "results" / "p180_v6" / name for name in ("console.txt", "build_sp8192.txt")]  # beside the logs


def test_many_log_commands_skip_files_that_are_not_logs(tmp_path, capsys):
    write_log(tmp_path / "done.txt", 1, 2.0, 1.19)
    write_log(tmp_path / "crashed.txt", 2, 2.0, 1.19, finished=False)
    (tmp_path / "early.txt").write_text("hyperparameters: data_path=x run_id=early seed=3\n")  # died before the model
    logs = [tmp_path / "done.txt", *NOT_LOGS, tmp_path / "crashed.txt", tmp_path / "early.txt"]
    assert records.main(["summarize", *map(str, logs)]) == 0
    out, err = capsys.readouterr()
    rows = [line.split(" | ")[:2] for line in out.splitlines()[2:]]
    assert rows == [["| done", "complete"], ["| crashed", "truncated"], ["| early", "truncated"]]
    assert err == f"skipped 2 files that are not train_gpt.py logs: {NOT_LOGS[0]}, {NOT_LOGS[1]}\n"
    for command in (["ttest", "--record-bpb", "1.2"], ["submission", "--author", "A", "--github-id", "a", "--name",
                                                       "N", "--blurb", "B"]):
        with pytest.raises(SystemExit, match=rf"^error: {NOT_LOGS[0]} is not a train_gpt.py log .*; give "):
            records.main([*command, str(tmp_path / "done.txt"), str(NOT_LOGS[0])])
    with pytest.raises(SystemExit, match="^error: none of the files is a train_gpt.py log"):
        records.main(["summarize", *map(str, NOT_LOGS)])


def test_plot_draws_each_run_in_one_colour(tmp_path, monkeypatch, capsys):
    figure = pytest.importorskip("matplotlib.figure", reason="plot needs matplotlib")
    figures = []
    monkeypatch.setattr(figure.Figure, "savefig", lambda self, *args, **kwargs: figures.append(self))
    write_log(tmp_path / "a.txt", 1, 2.0, 1.19)
    (tmp_path / "a.txt").write_text("".join(line for line in (tmp_path / "a.txt").read_text().splitlines(True)
                                            if "val_bpb:" not in line or line.startswith("final")))  # no val points
    write_log(tmp_path / "b.txt", 2, 2.0, 1.18)
    assert records.main(["plot", "--out", str(tmp_path / "x.png"), str(tmp_path / "a.txt"), str(NOT_LOGS[0]),
                         str(tmp_path / "b.txt")]) == 0
    colours = {}
    for ax in figures[0].axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert sorted(colours) == ["a (seed 1)", "b (seed 2)"]
    assert all(len(c) == 1 for c in colours.values()) and colours["a (seed 1)"] != colours["b (seed 2)"], colours
    assert "console.txt" in capsys.readouterr().err


def test_ttest_counts_each_run_once_and_needs_a_strict_excess(tmp_path, capsys):
    logs = three_logs(tmp_path / "runs", [1.19, 1.19, 1.19])
    with pytest.raises(SystemExit, match="each run must count once"):
        records.main(["ttest", "--record-bpb", "1.2014", str(logs[0]), str(logs[0])])
    threshold = 0.005 / math.log(2) * TPB
    record_at_threshold = 1.19 + threshold  # identical scores exactly at the threshold: not an improvement
    assert records.significance([1.19, 1.19], TPB, record_at_threshold, 0.005, 0.01).passed is False
    assert records.significance([1.19, 1.19], TPB, record_at_threshold + 1e-6, 0.005, 0.01).passed is True


def test_missing_paths_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        records.main(["size", str(tmp_path / "nope.txt")])
    assert "nope.txt does not exist" in capsys.readouterr().err


# ---- tools/proxy.sh ---------------------------------------------------------------------------

def proxy(tmp_path, *args, corpus) -> subprocess.CompletedProcess:
    env = dict(PATH="/usr/bin:/bin", CORPUS=str(corpus), RESULTS=str(tmp_path / "results"))
    return subprocess.run(["bash", "tools/proxy.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_proxy_refuses_an_incomplete_corpus_or_a_bad_call_in_one_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = [line.split()[1] for line in (ROOT / "tools" / "corpus_v2.sha256").read_text().splitlines()]
    assert names == [f"docs_{i:02d}.jsonl.xz" for i in range(15)]
    (corpus / names[0]).write_bytes(b"cut short in transfer")
    for args, message in ((("180", "def", "1337", ""), f"error: {corpus} lacks 15 of the 15 corpus files"),
                          (("def", "1337", ""), "error: usage: bash tools/proxy.sh CAP NAME SEED"),
                          (("600", "def", "1337"), "error: usage: bash tools/proxy.sh CAP NAME SEED")):
        run = proxy(tmp_path, *args, corpus=corpus)
        assert run.returncode == 2 and run.stderr.startswith(message) and run.stderr.count("\n") == 1, run.stderr
        assert run.stdout == "" and not (tmp_path / "results").exists()  # refused before any work


def test_compare_gives_paired_differences_and_their_mean(tmp_path, capsys):
    for name, seed, bpb, total in (("a1", 1, 1.30, 15_000_000), ("b1", 1, 1.28, 15_010_000),
                                   ("a2", 2, 1.31, 15_000_000), ("b2", 2, 1.30, 15_030_000)):
        write_log(tmp_path / f"{name}.txt", seed, bpb * math.log(2) / TPB, bpb, total=total)
    assert records.main(["compare", *(str(tmp_path / f"{n}.txt") for n in ("a1", "b1", "a2", "b2"))]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2] == "| a1 | b1 | +0.0000 | -0.02000 | +10,000 | +0.00 |"  # pre-quant: the same line in both
    assert rows[3] == "| a2 | b2 | +0.0000 | -0.01000 | +30,000 | +0.00 |"
    assert rows[4] == "| mean of 2 | | +0.0000 | -0.01500 | +20,000 | +0.00 |"
    with pytest.raises(SystemExit, match="pairs of logs"):
        records.main(["compare", str(tmp_path / "a1.txt")])
    with pytest.raises(SystemExit, match="not a pair"):
        records.main(["compare", str(tmp_path / "a1.txt"), str(tmp_path / "b2.txt")])


def test_estimate_scales_a_one_gpu_run_to_the_record_run(tmp_path, capsys):
    log = tmp_path / "p600.txt"
    write_log(log, 1337, 3.0, 1.25, steps=1900)
    text = log.read_text().replace("world_size:8 grad_accum_steps:1", "world_size:1 grad_accum_steps:8")
    text = text.replace("step_avg:71.47ms", "step_avg:391.00ms").replace("eval_time:2100ms", "eval_time:40500ms")
    log.write_text(text + "final_eval:sliding_window stride:256 context_min:3840 (after the first window) "
                          "targets:1012500\n")
    assert records.main(["estimate", str(log)]) == 0
    out = capsys.readouterr().out  # 391 ms is the seed's 71.47 ms; 40.5 s for 1/40 of the split: x 40 / 5.47
    assert "8xH100 step:71.5ms steps_in_600s:8,395" in out and "-> 296s for 40,500,000 on 8 GPUs (within" in out
    log.write_text(text.replace("world_size:1 grad_accum_steps:8", "world_size:8 grad_accum_steps:1"))
    with pytest.raises(SystemExit, match="not a finished one-GPU training log"):
        records.main(["estimate", str(log)])
