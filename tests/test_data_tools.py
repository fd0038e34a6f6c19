"""data/: shard format, building from documents, verification and downloading (against a local
stand-in for the hub)."""

from __future__ import annotations

import bz2
import gzip
import http.server
import json
import lzma
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import build
import shards
import train_gpt
import verify
from conftest import ROOT, SHARD_TOKENS, VAL_DOCS, run_train, tiny_env
from tiny import make_documents, write_jsonl


# ---- the format -------------------------------------------------------------------------------

def test_shard_round_trip_between_data_tools_and_train_gpt(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 65535, size=12345, dtype=np.uint16)
    path = tmp_path / "fineweb_train_000000.bin"
    shards.write_shard(path, tokens)
    assert path.stat().st_size == 1024 + 2 * tokens.size
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, 1, tokens.size] and not header[3:].any()
    np.testing.assert_array_equal(shards.read_tokens(path), tokens)
    np.testing.assert_array_equal(train_gpt.load_shard(path, vocab_size=65536), tokens)
    assert not list(tmp_path.glob("*.tmp*")), "the temporary file must be renamed away"


@pytest.mark.parametrize("damage", ["magic", "version", "truncated", "extra"])
def test_both_readers_reject_damaged_shards(tmp_path, damage):
    path = tmp_path / "fineweb_val_000000.bin"
    shards.write_shard(path, np.arange(100, dtype=np.uint16))
    data = bytearray(path.read_bytes())
    if damage == "magic":
        data[0:4] = (123).to_bytes(4, "little")
    elif damage == "version":
        data[4:8] = (2).to_bytes(4, "little")
    elif damage == "truncated":
        data = data[:-2]
    else:
        data += b"\0\0"
    path.write_bytes(bytes(data))
    with pytest.raises(shards.ShardError):
        shards.read_header(path)
    with pytest.raises(train_gpt.ConfigError, match=str(path)):
        train_gpt.read_shard_header(path)


# ---- building ---------------------------------------------------------------------------------

def test_build_splits_documents_and_writes_bos_per_document(dataset, sp, corpus):
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    val = np.concatenate([shards.read_tokens(p) for p in sorted(dataset.glob("fineweb_val_*.bin"))])
    train = np.concatenate([shards.read_tokens(p) for p in sorted(dataset.glob("fineweb_train_*.bin"))])
    expected_val = np.concatenate([[1] + sp.encode(d) for d in docs[:VAL_DOCS]])
    expected_train = np.concatenate([[1] + sp.encode(d) for d in docs[VAL_DOCS:]])
    np.testing.assert_array_equal(val, expected_val)
    np.testing.assert_array_equal(train, expected_train)
    assert np.count_nonzero(val == 1) == VAL_DOCS and 2 not in val, "BOS per document, no EOS"
    sizes = [shards.read_header(p) for p in sorted(dataset.glob("fineweb_train_*.bin"))]
    assert all(s == SHARD_TOKENS for s in sizes[:-1]) and 0 < sizes[-1] <= SHARD_TOKENS
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["splits"]["val"] == dict(docs=VAL_DOCS, tokens=val.size,
                                             text_bytes=sum(len(d.encode()) for d in docs[:VAL_DOCS]))
    assert manifest["splits"]["train"]["tokens"] == train.size
    assert manifest["tokenizer"]["vocab_size"] == sp.vocab_size()
    assert [s["name"] for s in manifest["shards"]] == ["fineweb_val_000000.bin"] + [
        f"fineweb_train_{i:06d}.bin" for i in range(len(sizes))]


def test_build_is_deterministic_and_reads_every_compression(tmp_path, corpus, tokenizer_path, dataset):
    text = corpus.read_bytes()
    variants = {"docs.jsonl.gz": gzip.compress(text), "docs.jsonl.xz": lzma.compress(text),
                "docs.jsonl.bz2": bz2.compress(text)}
    for name, blob in variants.items():
        src = tmp_path / name
        src.write_bytes(blob)
        out = tmp_path / name.replace(".", "_")
        build.main([str(src), "--out", str(out), "--tokenizer", str(tokenizer_path), "--val-docs", str(VAL_DOCS),
                    "--shard-tokens", str(SHARD_TOKENS), "--quiet", "--threads", "1"])
        for shard in sorted(dataset.glob("fineweb_*.bin")):
            assert (out / shard.name).read_bytes() == shard.read_bytes(), (name, shard.name)
    # Same input, same bytes, manifest included (the input file name is the same).
    again = tmp_path / "again"
    shutil.copy(corpus, tmp_path / corpus.name)
    build.main([str(tmp_path / corpus.name), "--out", str(again), "--tokenizer", str(tokenizer_path),
                "--val-docs", str(VAL_DOCS), "--shard-tokens", str(SHARD_TOKENS), "--quiet"])
    for path in sorted(dataset.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_build_reads_zstd(tmp_path, corpus, tokenizer_path, dataset):
    zstandard = pytest.importorskip("zstandard", reason="zstandard (pip install zstandard) reads .zst inputs")
    src = tmp_path / "docs.jsonl.zst"
    src.write_bytes(zstandard.ZstdCompressor().compress(corpus.read_bytes()))
    build.main([str(src), "--out", str(tmp_path / "out"), "--tokenizer", str(tokenizer_path),
                "--val-docs", str(VAL_DOCS), "--shard-tokens", str(SHARD_TOKENS), "--quiet"])
    for shard in sorted(dataset.glob("fineweb_*.bin")):
        assert (tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes()


def test_build_refuses_to_mix_with_old_shards(tmp_path, corpus, tokenizer_path, capsys):
    args = [str(corpus), "--out", str(tmp_path), "--tokenizer", str(tokenizer_path), "--val-docs", "5", "--quiet"]
    build.main(args)
    with pytest.raises(SystemExit):
        build.main(args)
    assert "--overwrite" in capsys.readouterr().err
    build.main(args + ["--overwrite"])


def test_build_trains_tokenizer_with_challenge_settings_on_training_docs_only(tmp_path):
    # The validation documents hold a word that appears nowhere else: a tokenizer trained on them
    # would learn it as one piece.
    docs = [f"zqxjv{i} zqxjvzqxjv zqxjv zqxjv" for i in range(30)] + make_documents(300, seed=5)
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    build.main([str(corpus), "--out", str(tmp_path / "ds"), "--train-tokenizer", str(tmp_path / "tok" / "t300"),
                "--vocab-size", "400", "--val-docs", "30", "--quiet"])
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "t300.model"))
    assert "▁zqxjv" not in {sp.id_to_piece(i) for i in range(sp.vocab_size())}
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]  # pad/bos/eos/unk 0..3
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256  # byte fallback
    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]  # split digits
    assert not sp.encode("hello", out_type=str)[0].startswith("▁")  # no dummy prefix
    assert sp.encode("ｈｅｌｌｏ") == sp.encode("hello")  # NFKC normalization
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["tokenizer"]["trainer_settings"] == json.loads(json.dumps(shards.TRAINER_SETTINGS))


def test_build_never_replaces_an_existing_tokenizer_silently(tmp_path, corpus, tokenizer_path, capsys):
    prefix = tmp_path / "tok" / "mine"
    prefix.parent.mkdir()
    shutil.copy(tokenizer_path, f"{prefix}.model")
    args = [str(corpus), "--out", str(tmp_path / "ds"), "--train-tokenizer", str(prefix), "--vocab-size", "400",
            "--val-docs", "5", "--quiet"]
    with pytest.raises(SystemExit):
        build.main(args)
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert Path(f"{prefix}.model").read_bytes() == tokenizer_path.read_bytes()
    build.main(args + ["--overwrite"])
    import sentencepiece as spm
    assert spm.SentencePieceProcessor(model_file=f"{prefix}.model").vocab_size() == 400
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["mine.model", "mine.vocab"], "no temporary files left"


# ---- a held-back second validation set ---------------------------------------------------------

HOLDOUT_DOCS = 100


@pytest.fixture(scope="module")
def holdout_build(tmp_path_factory, corpus, tokenizer_path):
    """The fixture corpus built like `dataset`, plus its last HOLDOUT_DOCS documents held back."""
    root = tmp_path_factory.mktemp("holdout")
    build.main([str(corpus), "--out", str(root / "main"), "--tokenizer", str(tokenizer_path), "--val-docs",
                str(VAL_DOCS), "--shard-tokens", str(SHARD_TOKENS), "--quiet", "--holdout-docs", str(HOLDOUT_DOCS),
                "--holdout-out", str(root / "held")])
    return root / "main", root / "held"


def split_tokens(folder: Path, split: str) -> np.ndarray:
    return np.concatenate([shards.read_tokens(p) for p in sorted(folder.glob(f"fineweb_{split}_*.bin"))])


def test_holdout_takes_the_last_documents_out_of_training(holdout_build, dataset, corpus, sp):
    main, held = holdout_build
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    tail = docs[-HOLDOUT_DOCS:]
    expected_held = np.concatenate([[1] + sp.encode(d) for d in tail])  # BOS + tokens, per document
    assert sorted(p.name for p in held.iterdir()) == ["fineweb_val_000000.bin", "manifest.json"]
    np.testing.assert_array_equal(split_tokens(held, "val"), expected_held)
    # Validation untouched; training = the build without the holdout, minus exactly those tokens.
    assert (main / "fineweb_val_000000.bin").read_bytes() == (dataset / "fineweb_val_000000.bin").read_bytes()
    full_train, train = split_tokens(dataset, "train"), split_tokens(main, "train")
    assert train.size == full_train.size - expected_held.size
    np.testing.assert_array_equal(train, full_train[: train.size])
    np.testing.assert_array_equal(full_train[train.size:], expected_held)
    # No document in two splits: every document once, in the split its position gives it.
    pieces = {name: [tuple(d) for d in np.split(t, np.flatnonzero(t == 1)[1:])]
              for name, t in (("val", split_tokens(main, "val")), ("train", train), ("held", expected_held))}
    assert [len(pieces[k]) for k in ("val", "train", "held")] == [VAL_DOCS, len(docs) - VAL_DOCS - HOLDOUT_DOCS,
                                                                  HOLDOUT_DOCS]
    for a, b in (("val", "train"), ("val", "held"), ("train", "held")):
        assert not set(pieces[a]) & set(pieces[b]), (a, b)

    manifest = json.loads((main / "manifest.json").read_text())
    held_manifest = json.loads((held / "manifest.json").read_text())
    held_counts = dict(docs=HOLDOUT_DOCS, tokens=expected_held.size, text_bytes=sum(len(d.encode()) for d in tail))
    assert manifest["holdout"] == dict(held_counts, folder="../held",
                                       which=f"the last {HOLDOUT_DOCS} documents of the inputs, not trained on")
    assert manifest["splits"]["train"]["docs"] == len(docs) - VAL_DOCS - HOLDOUT_DOCS
    assert manifest["splits"]["train"]["tokens"] == train.size and manifest["val_docs"] == VAL_DOCS
    assert held_manifest["splits"] == dict(val=held_counts, train=dict(docs=0, tokens=0, text_bytes=0))
    assert held_manifest["val_docs"] == HOLDOUT_DOCS and held_manifest["held_back_from"] == "../main"
    assert held_manifest["tokenizer"] == manifest["tokenizer"] and held_manifest["inputs"] == manifest["inputs"]
    # Without the flags nothing changes: no holdout entry, the same keys otherwise.
    plain = json.loads((dataset / "manifest.json").read_text())
    assert set(manifest) == set(plain) | {"holdout"} and set(held_manifest) == set(plain) | {"held_back_from"}
    # train_gpt.py scores an artifact on it with nothing but DATA_PATH: no training shards needed.
    assert train_gpt.find_shards(str(held), need_train=False) == ([], [held / "fineweb_val_000000.bin"])


def test_holdout_build_is_deterministic(holdout_build, tmp_path, corpus, tokenizer_path):
    main, held = holdout_build
    shutil.copy(corpus, tmp_path / corpus.name)
    build.main([str(tmp_path / corpus.name), "--out", str(tmp_path / "main"), "--tokenizer", str(tokenizer_path),
                "--val-docs", str(VAL_DOCS), "--shard-tokens", str(SHARD_TOKENS), "--quiet", "--threads", "1",
                "--batch-docs", "7", "--holdout-docs", str(HOLDOUT_DOCS), "--holdout-out", str(tmp_path / "held")])
    for folder in (main, held):
        for path in sorted(folder.iterdir()):
            assert (tmp_path / folder.name / path.name).read_bytes() == path.read_bytes(), path


@pytest.mark.slow
def test_holdout_scores_an_artifact(first_run, holdout_build, tokenizer_path, tmp_path):
    artifact = first_run[0] / "artifacts" / "first_model.int8.ptz"
    # Its own folder: the shared run's logs stay as the other tests expect them.
    run = run_train(tmp_path, tiny_env(holdout_build[1], tokenizer_path, EVAL_ARTIFACT=str(artifact), RUN_ID="held"))
    assert run.returncode == 0, run.stderr
    assert re.search(r"^final_\w+_roundtrip_exact val_loss:[\d.]+ val_bpb:[\d.]+", run.stdout, re.M), run.stdout


def test_verify_checks_both_folders_of_a_holdout_build(holdout_build, tokenizer_path, tmp_path):
    outputs = []
    for folder in holdout_build:
        run = subprocess.run([sys.executable, str(ROOT / "data" / "verify.py"), str(folder), "--tokenizer",
                              str(tokenizer_path)], capture_output=True, text=True)
        assert run.returncode == 0 and run.stdout.rstrip().endswith("OK"), run.stdout + run.stderr
        outputs.append(run.stdout)
    assert f"holdout: {HOLDOUT_DOCS:,} documents" in outputs[0] and "(verify it too)" in outputs[0]
    assert "val: 1 shards" in outputs[1] and f"{HOLDOUT_DOCS:,} BOS" in outputs[1] and "train: 0 shards" in outputs[1]
    # The main folder's manifest must agree with the holdout folder's.
    copy = tmp_path / "copy"
    for folder in holdout_build:
        shutil.copytree(folder, copy / folder.name)
    held_manifest = copy / "held" / "manifest.json"
    data = json.loads(held_manifest.read_text())
    data["splits"]["val"]["tokens"] += 1
    held_manifest.write_text(json.dumps(data))
    problems, summaries = verify.verify(copy / "main", None, None, tokenizer_path)
    assert summaries["holdout"]["found"] and any("its manifest counts" in p for p in problems), problems
    problems, _ = verify.verify(copy / "held", None, None, tokenizer_path)
    assert any("val split" in p and "manifest says" in p for p in problems), problems
    # A main folder copied without its holdout still verifies: there is nothing to compare with.
    shutil.rmtree(copy / "held")
    problems, summaries = verify.verify(copy / "main", None, None, tokenizer_path)
    assert not problems and not summaries["holdout"]["found"]


@pytest.mark.parametrize("extra, message", [
    (["--holdout-docs", "5"], "--holdout-docs N and --holdout-out DIR go together"),
    (["--holdout-out", "{tmp}/held"], "--holdout-docs N and --holdout-out DIR go together"),
    (["--holdout-docs", "0", "--holdout-out", "{tmp}/held"], "--holdout-docs must be > 0"),
    (["--holdout-docs", "5", "--holdout-out", "{tmp}/main/"], "is the --out folder"),
    (["--holdout-docs", "1160", "--holdout-out", "{tmp}/held"], "not more than --val-docs 40 + --holdout-docs 1160"),
])
def test_holdout_flag_errors(tmp_path, corpus, tokenizer_path, capsys, extra, message):
    args = [str(corpus), "--out", str(tmp_path / "main"), "--tokenizer", str(tokenizer_path), "--val-docs",
            str(VAL_DOCS), "--quiet"] + [a.format(tmp=tmp_path) for a in extra]
    with pytest.raises(SystemExit) as e:
        build.main(args)
    error = capsys.readouterr().err.strip().splitlines()[-1] if e.value.code == 2 else str(e.value.code)
    assert message in error, error


def test_training_a_tokenizer_without_training_documents_is_a_one_line_error(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit) as e:
        build.main([str(corpus), "--out", str(tmp_path / "main"), "--train-tokenizer", str(tmp_path / "tok"),
                    "--vocab-size", "512", "--val-docs", "40", "--holdout-docs", "1160", "--holdout-out",
                    str(tmp_path / "held"), "--quiet"])
    assert e.value.code == 2
    assert "no training documents to train the tokenizer on" in capsys.readouterr().err.strip().splitlines()[-1]


def test_holdout_may_leave_a_single_training_document(tmp_path, corpus, tokenizer_path, sp):
    n_docs = len(corpus.read_text().splitlines())
    build.main([str(corpus), "--out", str(tmp_path / "main"), "--tokenizer", str(tokenizer_path), "--val-docs",
                str(VAL_DOCS), "--quiet", "--holdout-docs", str(n_docs - VAL_DOCS - 1),
                "--holdout-out", str(tmp_path / "held")])
    only_train = json.loads(corpus.read_text().splitlines()[VAL_DOCS])["text"]
    np.testing.assert_array_equal(split_tokens(tmp_path / "main", "train"), [1] + sp.encode(only_train))


def test_holdout_folder_is_protected_like_out(tmp_path, corpus, tokenizer_path, capsys):
    held = tmp_path / "held"
    held.mkdir()
    (held / "fineweb_val_000000.bin").write_bytes(b"old")
    args = [str(corpus), "--out", str(tmp_path / "main"), "--tokenizer", str(tokenizer_path), "--val-docs", "5",
            "--quiet", "--holdout-docs", "5", "--holdout-out", str(held)]
    with pytest.raises(SystemExit):
        build.main(args)
    assert "pass --overwrite or choose another --holdout-out" in capsys.readouterr().err
    assert (held / "fineweb_val_000000.bin").read_bytes() == b"old"
    build.main(args + ["--overwrite"])
    assert shards.read_tokens(held / "fineweb_val_000000.bin")[0] == 1


def test_holdout_is_not_seen_by_a_trained_tokenizer(tmp_path):
    # The held-back documents hold a word that appears nowhere else, as in the validation test above.
    docs = make_documents(300, seed=5) + [f"zqxjv{i} zqxjvzqxjv zqxjv zqxjv" for i in range(30)]
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    build.main([str(corpus), "--out", str(tmp_path / "ds"), "--train-tokenizer", str(tmp_path / "tok" / "t"),
                "--vocab-size", "400", "--val-docs", "10", "--quiet", "--holdout-docs", "30",
                "--holdout-out", str(tmp_path / "held")])
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "t.model"))
    assert "▁zqxjv" not in {sp.id_to_piece(i) for i in range(sp.vocab_size())}


# ---- verification -----------------------------------------------------------------------------

def copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    return out


def test_verify_notices_another_tokenizer(dataset, tmp_path, corpus):
    import sentencepiece as spm
    other = shards.train_tokenizer(shards.iter_documents([corpus]), 480, tmp_path / "other")
    assert spm.SentencePieceProcessor(model_file=str(other)).vocab_size() == 480
    problems, _ = verify.verify(dataset, 512, VAL_DOCS, other)
    assert any("is not the tokenizer the shards were built with" in p for p in problems)


def test_verify_accepts_a_good_folder(dataset, tokenizer_path):
    run = subprocess.run([sys.executable, str(ROOT / "data" / "verify.py"), str(dataset), "--tokenizer",
                          str(tokenizer_path), "--val-docs", str(VAL_DOCS)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "val: 1 shards, " in run.stdout and f"{VAL_DOCS:,} BOS" in run.stdout and run.stdout.rstrip().endswith("OK")


@pytest.mark.parametrize("damage, message", [
    ("corrupt_header", "bad header"),
    ("big_token", "token id 600 >= vocabulary size 512"),
    ("changed_bytes", "sha256 differs"),
    ("missing_shard", "not numbered"),
    ("wrong_doc_count", "expected 41"),
])
def test_verify_reports_each_problem(dataset, tmp_path, damage, message):
    folder = copy_dataset(dataset, tmp_path)
    val_docs = VAL_DOCS
    first_train = folder / "fineweb_train_000001.bin"
    if damage == "corrupt_header":
        data = bytearray(first_train.read_bytes())
        data[0] ^= 0xFF
        first_train.write_bytes(bytes(data))
    elif damage == "big_token":
        tokens = shards.read_tokens(first_train).copy()
        tokens[5] = 600
        shards.write_shard(first_train, tokens)
    elif damage == "changed_bytes":
        tokens = shards.read_tokens(first_train).copy()
        tokens[5] = (tokens[5] + 1) % 500
        shards.write_shard(first_train, tokens)
    elif damage == "missing_shard":
        first_train.unlink()
    else:
        val_docs = VAL_DOCS + 1
    problems, _ = verify.verify(folder, 512, val_docs)
    assert any(message in p for p in problems), problems
    run = subprocess.run([sys.executable, str(ROOT / "data" / "verify.py"), str(folder), "--vocab-size", "512",
                          "--val-docs", str(val_docs)], capture_output=True, text=True)
    assert run.returncode == 1 and "FAILED" in run.stdout


def test_verify_without_a_vocabulary_size_still_checks_every_shard(dataset, tmp_path):
    folder = copy_dataset(dataset, tmp_path)
    (folder / "manifest.json").unlink()
    headerless, truncated = folder / "fineweb_train_000001.bin", folder / "fineweb_train_000002.bin"
    headerless.write_bytes(b"\0" * 8 + headerless.read_bytes()[8:])
    truncated.write_bytes(truncated.read_bytes()[:-2])
    problems, summaries = verify.verify(folder, None, None)
    assert [p for p in problems if str(headerless) in p] == [f"{headerless}: bad header (want magic 20240520, "
                                                             f"version 1)"]
    assert [p for p in problems if str(truncated) in p][0].startswith(f"{truncated}: ")
    assert problems[-1] == f"token ids not checked: pass --tokenizer or --vocab-size ({folder} has no " \
                           f"manifest.json)"
    assert len(problems) == 3 and summaries["val"]["bos"] == VAL_DOCS
    run = subprocess.run([sys.executable, str(ROOT / "data" / "verify.py"), str(folder)], capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stdout.count("PROBLEM: ") == 3 and "FAILED, 3 problem(s)" in run.stdout


@pytest.mark.slow
def test_tiny_dataset_trains_with_the_command_it_prints(tmp_path):
    out, prefix = tmp_path / "tiny_sp512", tmp_path / "tokenizers" / "tiny_512"
    made = subprocess.run([sys.executable, str(ROOT / "data" / "tiny.py"), "--out", str(out), "--tokenizer",
                           str(prefix), "--docs", "600", "--val-docs", "40"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert not verify.verify(out, None, None, Path(f"{prefix}.model"))[0]
    *assignments, python, script = shlex.split(made.stdout.splitlines()[-1])
    assert python == "python3" and (tmp_path / script).resolve() == ROOT / "train_gpt.py"
    env = dict(a.split("=", 1) for a in assignments)
    assert (env["DATA_PATH"], env["TOKENIZER_PATH"], env["VOCAB_SIZE"]) == (str(out), f"{prefix}.model", "512")
    run = run_train(tmp_path, env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    bpb = [float(x) for x in re.findall(r"^step:\d+/\d+ val_loss:[\d.]+ val_bpb:([\d.]+) ", run.stdout, re.M)]
    assert len(bpb) == 2 and bpb[1] < 0.7 * bpb[0], "the loss falls"
    label = train_gpt.export_label(train_gpt.Hyperparameters({})).replace("+", "_")  # the default export's
    assert re.search(rf"^final_{label}_roundtrip_exact val_loss:[\d.]+ val_bpb:[\d.]+$", run.stdout, re.M)


# ---- downloading ------------------------------------------------------------------------------

class Hub:
    """A local stand-in for the hub: serves a folder under /datasets/<repo>/resolve/<rev>/ and
    counts requests. `truncate` names files whose body is cut short (an interrupted transfer)."""

    def __init__(self, root: Path):
        self.root, self.requests, self.truncate = root, [], set()
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append(self.path)
                parts = self.path.split("/", 6)  # "", datasets, owner, name, resolve, main, file (any repo)
                path = hub.root / parts[6] if len(parts) == 7 and parts[4:6] == ["resolve", "main"] else None
                if path is None or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if path.name in hub.truncate else body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hub(tmp_path, dataset, tokenizer_path):
    root = tmp_path / "hub" / "datasets"
    (root / "datasets" / "fineweb10B_sp512").mkdir(parents=True)
    (root / "tokenizers").mkdir()
    for shard in dataset.glob("fineweb_*.bin"):
        shutil.copy(shard, root / "datasets" / "fineweb10B_sp512" / shard.name)
    shutil.copy(tokenizer_path, root / "tokenizers" / "fineweb_512_bpe.model")
    n_train = len(list(dataset.glob("fineweb_train_*.bin")))
    manifest = dict(
        datasets=[dict(name="fineweb10B_sp512", tokenizer_name="fineweb_512_bpe",
                       stats=dict(files_train=n_train, files_val=1))],
        tokenizers=[dict(name="fineweb_512_bpe", model_path="tokenizers/fineweb_512_bpe.model")])
    (root / "manifest.json").write_text(json.dumps(manifest))
    server = Hub(tmp_path / "hub")
    yield server
    server.server.shutdown()


def run_download(endpoint: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "data" / "download.py"), "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, env={"HF_ENDPOINT": endpoint, "PATH": "/usr/bin:/bin"})


def test_download_fetches_a_prefix_then_skips_complete_files(hub, tmp_path, dataset):
    data_dir = tmp_path / "local"
    run = run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "2")
    assert run.returncode == 0, run.stderr
    local = data_dir / "datasets" / "fineweb10B_sp512"
    assert sorted(p.name for p in local.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    for path in local.iterdir():
        assert path.read_bytes() == (dataset / path.name).read_bytes()
    assert (data_dir / "tokenizers" / "fineweb_512_bpe.model").is_file()
    hub.requests.clear()
    run = run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "3")
    assert run.returncode == 0 and "1 files downloaded, 4 already complete" in run.stdout, run.stdout
    assert len(hub.requests) == 1 and hub.requests[0].endswith("fineweb_train_000002.bin")


def test_interrupted_download_leaves_no_file_that_looks_complete(hub, tmp_path):
    data_dir = tmp_path / "local"
    hub.truncate.add("fineweb_train_000001.bin")
    run = run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "2", "--workers", "1")
    errors = [line for line in run.stderr.splitlines() if not line.startswith("  [")]  # minus progress lines
    assert run.returncode == 1 and len(errors) == 1 and errors[0].startswith("error: ") and "got 20512 of 41024" in errors[0]
    local = data_dir / "datasets" / "fineweb10B_sp512"
    assert not (local / "fineweb_train_000001.bin").exists()
    assert not [p for p in local.iterdir() if p.name.startswith(".")], "no partial files left behind"
    hub.truncate.clear()
    run = run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "2")
    assert run.returncode == 0 and shards.read_header(local / "fineweb_train_000001.bin") > 0


def test_download_replaces_a_damaged_local_shard(hub, tmp_path, dataset):
    data_dir = tmp_path / "local"
    assert run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "1").returncode == 0
    shard = data_dir / "datasets" / "fineweb10B_sp512" / "fineweb_train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "1").returncode == 0
    assert shard.read_bytes() == (dataset / shard.name).read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--variant", "sp9999"], "variant sp9999 is not in the manifest of willdepueoai/parameter-golf"),
    (["--variant", "sp512", "--train-shards", "99"], "ask for at most"),
])
def test_download_errors_are_one_line(hub, tmp_path, args, message):
    run = run_download(hub.endpoint, tmp_path / "local", *args)
    assert run.returncode == 1 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_each_variant_comes_from_its_repository(hub, tmp_path):
    data_dir = tmp_path / "local"
    missing = run_download(hub.endpoint, data_dir, "--variant", "sp8192")  # this hub has no sp8192
    assert missing.returncode == 1 and "not in the manifest of kevclark/parameter-golf" in missing.stderr
    assert hub.requests == ["/datasets/kevclark/parameter-golf/resolve/main/datasets/manifest.json"], \
        "a freshly fetched manifest is not fetched twice"
    assert run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "1").returncode == 0
    hub.requests.clear()
    # Another repository has its own cached manifest: this one's is fetched, not the first one's reused.
    other = run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "1", "--repo", "someone/else")
    assert other.returncode == 0 and hub.requests == ["/datasets/someone/else/resolve/main/datasets/manifest.json"]


def test_a_cached_manifest_without_the_variant_is_fetched_again(hub, tmp_path):
    data_dir = tmp_path / "local"
    assert run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "1").returncode == 0
    cached = data_dir / "manifest.willdepueoai--parameter-golf--main--datasets.json"
    cached.write_text(json.dumps(dict(datasets=[], tokenizers=[])))  # stale: from before sp512 was published
    hub.requests.clear()
    run = run_download(hub.endpoint, data_dir, "--variant", "sp512", "--train-shards", "1")
    assert run.returncode == 0, run.stderr
    assert hub.requests == ["/datasets/willdepueoai/parameter-golf/resolve/main/datasets/manifest.json"]


def test_unreachable_hub_is_one_line_error(tmp_path):
    run = run_download("http://127.0.0.1:9", tmp_path / "local", "--variant", "sp1024")
    assert run.returncode == 1
    assert run.stderr.startswith("error: cannot download") and len(run.stderr.strip().splitlines()) == 1
