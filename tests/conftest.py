"""Shared fixtures: a synthetic corpus, a SentencePiece model trained on it with the challenge's
settings, shards built from it by data/build.py, and helpers to run train_gpt.py on the CPU.
Nothing here reads ../shared: a fresh clone makes everything it tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))
from tiny import make_documents, write_jsonl  # noqa: E402  (data/tiny.py's documents)

VOCAB_SIZE = 512
VAL_DOCS = 40
SHARD_TOKENS = 20_000

def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the slow layer: train_gpt.py in subprocesses, under torchrun, on capped clocks")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a subprocess, torchrun or capped-clock run (runs with --slow)")


def pytest_collection_modifyitems(config, items):
    """The fast layer by default (unit tests and in-process tiny runs); --slow adds the slow one."""
    if not config.getoption("--slow"):
        slow = [item for item in items if "slow" in item.keywords]
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


def quantize(state, bits=8, clip_sigmas=6.0, hessians=None, damp=0.01, embed=(8, 0.0)):
    """train_gpt.quantize_state_dict with the seed's int8 unless told otherwise."""
    import train_gpt
    return train_gpt.quantize_state_dict(state, bits, clip_sigmas, hessians, damp, embed)


def leave_gloo() -> None:
    """Ends a spawned rank without gloo's teardown, which now and then aborts the exiting process
    after all its work is done (pytorch/pytorch#179291): a barrier, then a plain exit."""
    import torch.distributed as dist
    dist.barrier()
    os._exit(0)


def run_environment(monkeypatch, cwd, env: dict[str, str]) -> None:
    """The process as `python3 train_gpt.py` would find it in cwd with env: no other setting, no launcher."""
    import train_gpt
    for name in [*(n.upper() for n in train_gpt.Hyperparameters.defaults()), "RANK", "WORLD_SIZE", "LOCAL_RANK"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(cwd)


def cpu_run(rank: int = 0, world_size: int = 1, env: dict[str, str] | None = None):
    """train_gpt.Run for one rank of world_size on the CPU, with no process group: tests that need the
    ranks' total add up each rank's sums themselves."""
    import torch
    import train_gpt
    args = train_gpt.Hyperparameters(env or {})
    return train_gpt.Run(args, rank, world_size, max(train_gpt.MICRO_BATCHES // world_size, 1), False,
                         torch.device("cpu"))


def readme_block(name: str) -> str:
    """The command of README.md's bash block marked `<!-- name -->`, its lines joined, spaces single."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split(f"<!-- {name} -->\n```bash\n", 1)[1].split("```", 1)[0]
    return " ".join(block.replace("\\\n", " ").split())


SEED_SETTINGS = dict(word.split("=", 1) for word in readme_block("seed-environment").split() if word[0].isupper())
SEED_MODEL = {name: value for name, value in SEED_SETTINGS.items() if name in (  # the switches of its model
    "NUM_LAYERS", "MLP_MULT", "QK_GAIN_INIT", "MLP_LEAKY_SLOPE", "XSA_LAYERS", "ROPE_DIMS", "LN_SCALE", "SMEAR_GATE",
    "PARALLEL_LAYERS", "RECUR_LAYERS")}
SMALL_MODEL = dict(SEED_MODEL, VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", make_documents(1200, seed=0))


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory, corpus) -> Path:
    from shards import iter_documents, train_tokenizer
    return train_tokenizer(iter_documents([corpus]), VOCAB_SIZE, tmp_path_factory.mktemp("tok") / "test_512")


@pytest.fixture(scope="session")
def sp(tokenizer_path):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(tokenizer_path))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, corpus, tokenizer_path) -> Path:
    import build
    out = tmp_path_factory.mktemp("data") / "synthetic_sp512"
    build.main([str(corpus), "--out", str(out), "--tokenizer", str(tokenizer_path), "--val-docs", str(VAL_DOCS),
                "--shard-tokens", str(SHARD_TOKENS), "--quiet"])
    return out


def tiny_env(dataset: Path, tokenizer: Path, **overrides) -> dict[str, str]:
    """The seed's model, small enough to train end to end on two CPU cores in a few seconds. MODEL_DIM=192
    makes the embedding and the MLP matrices big enough for the int8 path of the export. It uses
    the step-count schedules: its learning rates are high, and a run of ITERATIONS=4 stays stable
    only because WARMDOWN_ITERS=10 decays it from the first step. It exports the seed's int8+zlib,
    whose log lines SPEC.md fixes, and scores without test-time training (its validation split is
    under one TTT chunk anyway); tests of other exports, and of TTT, say so."""
    env = dict(SEED_MODEL, DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), VOCAB_SIZE=str(VOCAB_SIZE),
               NUM_LAYERS="2", MODEL_DIM="192", NUM_HEADS="4", NUM_KV_HEADS="2", TRAIN_SEQ_LEN="64",
               TRAIN_BATCH_TOKENS="1024", VAL_BATCH_SIZE="4096", ITERATIONS="30", WARMUP_STEPS="2",
               WARMDOWN_ITERS="10", VAL_LOSS_EVERY="0", TRAIN_LOG_EVERY="1", MAX_WALLCLOCK_SECONDS="0", COMPILE="0",
               SEED="1", MATRIX_LR="0.04", TIED_EMBED_LR="0.1", SCALAR_LR="0.04", WARMDOWN_FRAC="0",
               MUON_MOMENTUM_WARMUP_FRAC="0", EMA_HORIZON_FRAC="0", QUANT_BITS="8", QUANT_GPTQ="0", COMPRESSOR="zlib",
               TTT_EPOCHS="0")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def run_train(cwd: Path, env: dict[str, str], nproc: int = 0, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs train_gpt.py in cwd: plainly (nproc=0) or under torchrun with nproc processes."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full_env.update(env, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=full_env.get("OMP_NUM_THREADS", "2"))
    script = str(ROOT / "train_gpt.py")
    cmd = [sys.executable, script] if nproc == 0 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script]
    log = cwd / "logs" / f"{env.get('RUN_ID', '-')}.txt"
    for attempt in range(3):
        run = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
        if attempt == 2 or not (nproc > 1 and run.returncode and GLOO_TEARDOWN_ABORT in run.stderr and
                                log.exists() and "_roundtrip_exact " in log.read_text()):
            return run
        # Rarely (1 in about 30 loaded CPU runs), a gloo rank aborts while its process exits, after the
        # final score, the barrier and destroy_process_group (upstream: pytorch/pytorch#179291). Up to two
        # retries; a script that aborts every time still fails. Free the RUN_ID's files for them.
        for path in [log, *(cwd / "artifacts").glob(f"{log.stem}_model.*")]:
            path.unlink()


def train_losses(output: str) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^step:(\d+)/\d+ train_loss:([\d.]+) ", output, re.M)}


@pytest.fixture(scope="session")
def first_run(tmp_path_factory, dataset, tokenizer_path):
    """One finished tiny training run (RUN_ID=first): its folder and its completed process."""
    cwd = tmp_path_factory.mktemp("run")
    run = run_train(cwd, tiny_env(dataset, tokenizer_path, RUN_ID="first", ITERATIONS="12"))
    assert run.returncode == 0, run.stdout + run.stderr
    return cwd, run
