"""Bad input: a one-line error that names the variable or file and the fix, before any training
work, and never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

import shards
import train_gpt
from conftest import run_environment, run_train, tiny_env


def config_error(monkeypatch, cwd, env: dict[str, str]) -> str:
    run_environment(monkeypatch, cwd, env)
    with pytest.raises(train_gpt.ConfigError) as e:
        train_gpt.main()
    message = str(e.value)
    assert "\n" not in message and len(message) < 400
    return message


def copy_of(dataset, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(dataset, folder)
    return folder


def test_missing_data_folder(monkeypatch, tmp_path, dataset, tokenizer_path):
    msg = config_error(monkeypatch, tmp_path, tiny_env(tmp_path / "nope", tokenizer_path))
    assert "DATA_PATH=" in msg and "is not a folder" in msg and "data/download.py" in msg


def test_folder_without_training_shards(monkeypatch, tmp_path, dataset, tokenizer_path):
    folder = copy_of(dataset, tmp_path)
    for path in folder.glob("fineweb_train_*"):
        path.unlink()
    msg = config_error(monkeypatch, tmp_path, tiny_env(folder, tokenizer_path))
    assert "holds no fineweb_train_*.bin shards" in msg and "data/download.py" in msg


def test_folder_without_validation_shard(monkeypatch, tmp_path, dataset, tokenizer_path):
    folder = copy_of(dataset, tmp_path)
    (folder / "fineweb_val_000000.bin").unlink()
    assert "holds no fineweb_val_*.bin shard" in config_error(monkeypatch, tmp_path, tiny_env(folder, tokenizer_path))


@pytest.mark.parametrize("damage, message", [("header", "no valid shard header"), ("size", "truncated or corrupt")])
def test_damaged_shard(monkeypatch, tmp_path, dataset, tokenizer_path, damage, message):
    folder = copy_of(dataset, tmp_path)
    shard = folder / "fineweb_train_000003.bin"  # a later shard: headers are all checked up front
    data = shard.read_bytes()
    shard.write_bytes(b"\0\0\0\0" + data[4:] if damage == "header" else data[:-1])
    msg = config_error(monkeypatch, tmp_path, tiny_env(folder, tokenizer_path))
    assert str(shard) in msg and message in msg


@pytest.mark.parametrize("split", ["val", "train"])
def test_token_ids_beyond_the_vocabulary(monkeypatch, tmp_path, dataset, tokenizer_path, split):
    folder = copy_of(dataset, tmp_path)
    shard = folder / f"fineweb_{split}_000000.bin"
    tokens = shards.read_tokens(shard).copy()
    tokens[10] = 700
    shards.write_shard(shard, tokens)
    msg = config_error(monkeypatch, tmp_path, tiny_env(folder, tokenizer_path))
    assert "token id 700 >= VOCAB_SIZE=512" in msg and "TOKENIZER_PATH" in msg


def test_tokenizer_vocabulary_mismatch(monkeypatch, tmp_path, dataset, tokenizer_path):
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path, VOCAB_SIZE=1024))
    assert "has 512 pieces but VOCAB_SIZE=1024" in msg


def test_tokenizer_that_is_not_a_model(monkeypatch, tmp_path, dataset):
    (tmp_path / "junk.model").write_bytes(b"\x00junk\nmore junk")
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tmp_path / "junk.model"))
    assert "is not a SentencePiece model" in msg


def test_tokenizer_without_a_standalone_space_piece(monkeypatch, tmp_path, dataset, tokenizer_path):
    # Stands in for a tokenizer whose vocabulary lacks "▁": the lookup falls back to <unk>.
    monkeypatch.setattr(train_gpt.spm.SentencePieceProcessor, "piece_to_id", lambda self, piece: self.unk_id())
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path))
    assert 'has no standalone "▁" piece' in msg


def test_missing_tokenizer(monkeypatch, tmp_path, dataset):
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tmp_path / "missing.model"))
    assert "TOKENIZER_PATH=" in msg and "does not exist" in msg


@pytest.mark.parametrize("overrides, message", [
    (dict(TRAIN_BATCH_TOKENS="1000"), "TRAIN_BATCH_TOKENS=1000 must be whole sequences: a multiple of "
                                      "WORLD_SIZE*grad_accum*TRAIN_SEQ_LEN = 1*8*64 = 512: set TRAIN_BATCH_TOKENS to"),
    (dict(VAL_BATCH_SIZE="256"), "VAL_BATCH_SIZE=256 must be at least one sequence per rank: set VAL_BATCH_SIZE to "
                                 "512 or more (default 524288)"),
    (dict(SEED="x"), "SEED='x' is not an integer"),
    (dict(TRAIN_SEQ_LEN="8192", TRAIN_BATCH_TOKENS="65536", VAL_BATCH_SIZE="65536"), "fewer than one sequence"),
    (dict(WORLD_SIZE="3", RANK="0"), "WORLD_SIZE=3 must divide 8"),
    (dict(WORLD_SIZE="2"), "WORLD_SIZE is set but RANK is not"),
    (dict(RANK="one", WORLD_SIZE="2"), "RANK='one' is not an integer"),
    (dict(RANK="2", WORLD_SIZE="2"), "RANK=2 and LOCAL_RANK=0 must lie in [0, WORLD_SIZE=2)"),
    (dict(SEED="-1"), "SEED=-1 must be between 0 and 2**32-1: set SEED to an integer in that range (default 1337)"),
    (dict(ITERATIONS="-1"), "ITERATIONS=-1 must be 0 or more: set ITERATIONS to a step count (default 20000)"),
    (dict(NUM_HEADS="5"), "heads must split MODEL_DIM into even head sizes"),
    (dict(NUM_KV_HEADS="0"), "NUM_KV_HEADS=0 must be > 0: set NUM_KV_HEADS to a positive number (default 4)"),
    (dict(PARALLEL_LAYERS="-1"), "PARALLEL_LAYERS=-1 must be 0 or more: set PARALLEL_LAYERS to"),
    (dict(WARMDOWN_FRAC="2"), "WARMDOWN_FRAC=2.0 must be a fraction of the budget in [0, 1]: set WARMDOWN_FRAC to"),
    (dict(XSA_LAYERS="-1"), "XSA_LAYERS=-1 must be 0 or more: set XSA_LAYERS to"),
    (dict(ROPE_DIMS="7"), "ROPE_DIMS=7 must be 0 (all) or an even number up to MODEL_DIM/NUM_HEADS: set ROPE_DIMS to"),
    (dict(EMA_HORIZON_FRAC="1.5"), "EMA_HORIZON_FRAC=1.5 must be a fraction of the budget in [0, 1]: set"),
    (dict(RECUR_LAYERS="2", RECUR_START="1"), "RECUR_LAYERS=2 from RECUR_START=1 must lie within NUM_LAYERS=2"),
    (dict(RECUR_LAYERS="1", RECUR_FROM_FRAC="1"), "RECUR_FROM_FRAC=1.0 in [0, 1) (or RECUR_LAYERS=0"),
    (dict(SDPA_BACKEND="flex"), "SDPA_BACKEND=flex must be auto/fa3/fa4/cudnn/flash: set SDPA_BACKEND to "
                                "auto (default auto)"),
    (dict(EVAL_STRIDE="-1"), "EVAL_STRIDE=-1 must be 0 or more: set EVAL_STRIDE to 0 (no sliding windows) or"),
    (dict(TTT_EPOCHS="-1"), "TTT_EPOCHS=-1 must be 0 or more: set TTT_EPOCHS to 0 (no test-time training) or"),
    (dict(TTT_EPOCHS="3", TTT_CHUNK_TOKENS="0"), "TTT_CHUNK_TOKENS=0 must be a positive multiple of"),
    (dict(TTT_EPOCHS="3", TTT_CHUNK_TOKENS="100"), "TTT_CHUNK_TOKENS=100 must be a positive multiple of WORLD_SIZE*"
                                                   "TRAIN_SEQ_LEN = 64: set TTT_CHUNK_TOKENS to a multiple of 64, or "
                                                   "TTT_EPOCHS=0 (no test-time training)"),
    (dict(EVAL_ARTIFACT="nope.int8.ptz"), "cannot read artifact nope.int8.ptz"),
    (dict(QUANT_BITS="4"), "QUANT_BITS=4 must be in 5..8: set QUANT_BITS to"),
    (dict(EMBED_BITS="9"), "EMBED_BITS=9 must be in 5..8: set EMBED_BITS to a number in that range (8: the seed's int8) "
                           "(default 8)"),
    (dict(EMBED_CLIP_SIGMAS="-1"), "EMBED_CLIP_SIGMAS=-1.0 must be > 0: set EMBED_CLIP_SIGMAS to a positive number"),
    (dict(QUANT_CLIP_SIGMAS="0"), "QUANT_CLIP_SIGMAS=0.0 must be > 0: set QUANT_CLIP_SIGMAS to a positive number "
                                  "of std deviations"),
    (dict(COMPRESSOR="zstd"), "COMPRESSOR=zstd must be one of zlib/lzma/rans: set COMPRESSOR to one of them "
                              "(default rans)"),
    (dict(QUANT_GPTQ="1"), "QUANT_GPTQ=1 needs QUANT_BITS < 8"),
    (dict(QUANT_GPTQ="1", QUANT_BITS="6", GPTQ_DAMP="0"), "GPTQ_DAMP > 0"),
    (dict(QUANT_GPTQ="1", QUANT_BITS="6", MAX_WALLCLOCK_SECONDS="5", GPTQ_RESERVE_SECONDS="5"),
     "0 <= GPTQ_RESERVE_SECONDS < MAX_WALLCLOCK_SECONDS"),
])
def test_bad_settings(monkeypatch, tmp_path, dataset, tokenizer_path, overrides, message):
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path, **overrides))
    assert message in msg
    assert " must be " not in msg or re.search(r"[:;] set [A-Z_]+ to ", msg), "a rule's error names the fix"


@pytest.mark.parametrize("name, default", [("EMBED_LR", 0.6), ("HEAD_LR", 0.008), ("TIED_EMBED_LR", 0.03),
                                           ("MATRIX_LR", 0.02), ("SCALAR_LR", 0.02), ("TTT_LR", 0.005)])
@pytest.mark.parametrize("value", ["-1", "0"])
def test_learning_rates_must_be_positive(monkeypatch, tmp_path, dataset, tokenizer_path, name, default, value):
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path, ITERATIONS="1", **{name: value}))
    assert msg == f"{name}={float(value)} must be > 0: set {name} to a positive number (default {default})"


@pytest.mark.parametrize("content", [b"not zlib at all", __import__("zlib").compress(b"not a torch file"),
                                     __import__("lzma").compress(b"not a torch file"), b"\xfd7zXZ\x00 cut short"])
def test_unreadable_artifact(monkeypatch, tmp_path, dataset, tokenizer_path, content):
    (tmp_path / "bad.int8.ptz").write_bytes(content)
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path, EVAL_ARTIFACT="bad.int8.ptz"))
    assert msg.startswith("cannot read artifact bad.int8.ptz")


def test_unwritable_log_folder(monkeypatch, tmp_path, dataset, tokenizer_path):
    (tmp_path / "logs").write_text("a file where the folder should be")
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path))
    assert msg.startswith("cannot write logs/") and "writable folder" in msg


@pytest.mark.parametrize("how", ["a file", "read-only", "no writes even by root"])
def test_unwritable_artifacts_folder(monkeypatch, tmp_path, dataset, tokenizer_path, how):
    artifacts = tmp_path / "artifacts"
    if how == "a file":
        artifacts.write_text("a file where the folder should be")
    elif how == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root ignores a folder's mode bits; the next case stands in for it")
        artifacts.mkdir(mode=0o555)
    else:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs Linux's /sys, where nobody may create files")
        artifacts.symlink_to("/sys/kernel")
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path, RUN_ID="r", ITERATIONS="2"))
    assert msg.startswith("cannot ") and "artifacts/" in msg and "writable" in msg
    assert not (tmp_path / "logs" / "r.txt").exists(), "a refused run leaves no log to claim its RUN_ID"


@pytest.mark.parametrize("run_id", ["../escape", "{tmp}/elsewhere/run", "a/b", ".hidden", "a b", "x" * 101])
def test_run_id_must_be_a_plain_name(monkeypatch, tmp_path, dataset, tokenizer_path, run_id):
    run_id = run_id.format(tmp=tmp_path)
    env = tiny_env(dataset, tokenizer_path, RUN_ID=run_id, ITERATIONS="1")
    msg = config_error(monkeypatch, tmp_path, env)
    assert msg.startswith(f"RUN_ID={run_id!r} is not a plain file name: ") and "set RUN_ID to" in msg
    assert [p.name for p in tmp_path.iterdir()] == [], "a refused run writes nothing"


def test_reused_run_id(monkeypatch, tmp_path, dataset, tokenizer_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "taken.txt").write_text("an earlier run")
    msg = config_error(monkeypatch, tmp_path, tiny_env(dataset, tokenizer_path, RUN_ID="taken"))
    assert "RUN_ID=taken was used before" in msg
    assert (tmp_path / "logs" / "taken.txt").read_text() == "an earlier run"


@pytest.mark.slow
def test_command_line_prints_one_line_and_exits_2(tmp_path, dataset, tokenizer_path):
    run = run_train(tmp_path, tiny_env(dataset, tokenizer_path, VOCAB_SIZE="1024"))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("error: TOKENIZER_PATH=") and run.stderr.count("\n") == 1
    assert not (tmp_path / "logs").exists(), "a rejected run leaves no files"


@pytest.mark.slow
def test_torchrun_world_size_error_is_said_once(tmp_path, dataset, tokenizer_path):
    run = run_train(tmp_path, tiny_env(dataset, tokenizer_path), nproc=3)
    assert run.returncode != 0
    assert run.stderr.count("error: WORLD_SIZE=3 must divide 8") == 1


@pytest.mark.slow
def test_a_rank_that_alone_finds_a_problem_says_it(tmp_path, dataset, tokenizer_path):
    # No rank 0 runs here to say it and have torchrun stop this rank: after its wait, rank 1 says it.
    env = tiny_env(dataset, tokenizer_path, VOCAB_SIZE="1024", RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")
    start = time.monotonic()
    run = run_train(tmp_path, env)
    assert run.returncode == 2 and time.monotonic() - start >= 10
    assert run.stderr.startswith("error (rank 1): TOKENIZER_PATH=") and run.stderr.count("\n") == 1


@pytest.mark.slow
def test_every_rank_stops_when_rank_0_cannot_claim_the_run(tmp_path, dataset, tokenizer_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "taken.txt").write_text("an earlier run")
    run = run_train(tmp_path, tiny_env(dataset, tokenizer_path, RUN_ID="taken"), nproc=2, timeout=120)
    assert run.returncode != 0 and run.stderr.count("error: logs/taken.txt already exists") == 1
    assert (tmp_path / "logs" / "taken.txt").read_text() == "an earlier run"
