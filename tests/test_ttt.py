"""Score-first test-time training (TTT_EPOCHS > 0): never trains on a target before it is scored,
scores every target once, changes nothing at a learning rate of 0, and gives the same score on 1 and
2 processes and when an artifact is scored again."""

from __future__ import annotations

import copy
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

import train_gpt
from conftest import ROOT, VOCAB_SIZE, cpu_run, run_train, tiny_env

sys.path.insert(0, str(ROOT / "tools"))
import records  # noqa: E402

CPU = torch.device("cpu")


class PositionRecorder(nn.Module):
    """Stands in for the GPT on a split whose token i is the number i: every input is its own
    position, so the recorder sees which positions each scoring pass and each training step reads."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.events: list[tuple[str, np.ndarray]] = []  # ("score" or "train", the inputs: (rows, seq_len))

    def forward(self, x, y, reduction="mean"):
        assert torch.equal(y, x + 1)
        self.events.append(("score" if torch.is_inference_mode_enabled() else "train", x.numpy().copy()))
        return torch.zeros(y.shape) if reduction == "none" else (self.weight * y.float()).mean()


def one_byte_each(vocab_size: int) -> train_gpt.ByteTables:
    no = torch.zeros(vocab_size, dtype=torch.bool)
    return train_gpt.ByteTables(torch.ones(vocab_size, dtype=torch.int16), no, no)


def record(n_targets, seq_len, stride, chunk, epochs, rank=0, world_size=1):
    tokens = np.arange(n_targets + 1, dtype=np.uint16)
    model = PositionRecorder()
    ttt = train_gpt.ScoreFirstTTT(model.parameters(), epochs, 0.1, chunk)
    val = train_gpt.Validation(tokens, one_byte_each(n_targets + 1), seq_len, 3)
    sums = train_gpt.validation_sums(cpu_run(rank, world_size), model, val, stride, ttt)
    return model.events, sums, ttt


# Splits whose length is no multiple of the chunk, the stride or the sequence: a tail everywhere.
SPLITS = [(343, 16, 5, 64), (343, 16, 0, 48), (343, 16, 12, 32), (100, 16, 4, 96), (47, 16, 7, 16)]


@pytest.mark.parametrize("n_targets, seq_len, stride, chunk", SPLITS)
def test_training_only_ever_reads_targets_scored_before(n_targets, seq_len, stride, chunk):
    epochs = 2
    events, sums, ttt = record(n_targets, seq_len, stride, chunk, epochs)
    # What each window scores, from the window ends alone: the targets after the previous window's end.
    ends = train_gpt.window_ends(n_targets, seq_len, stride)
    scores = {end: range(max(prev, end - seq_len), end) for prev, end in zip([0] + ends, ends)}
    chunk_of_window = {end: scored[0] // chunk for end, scored in scores.items()}
    n_chunks = max(chunk_of_window.values()) + 1
    scored_at = np.full(n_targets, -1)  # event number of the pass that scored each target
    windows_seen, trained = set(), []
    for i, (kind, x) in enumerate(events):
        if kind == "score":
            batch = {int(row[-1]) + 1 for row in x}  # window ends (a short batch repeats its first window)
            assert not batch & windows_seen, "a window scored twice"
            windows_seen |= batch
            for end in batch:
                assert (scored_at[scores[end]] == -1).all()
                scored_at[scores[end]] = i
            continue
        # Every token a step reads, input or target, is the first token of the split or the token of a
        # target scored in an earlier pass.
        read = np.union1d(x, x + 1)
        assert ((scored_at[read[read > 0] - 1] >= 0) & (scored_at[read[read > 0] - 1] < i)).all()
        c = int(x.min()) // chunk
        np.testing.assert_array_equal(x.ravel(), np.arange(c * chunk, (c + 1) * chunk), "the chunk's targets, once")
        assert c < n_chunks - 1, "the last chunk is never trained on"
        # Every window of chunks up to c is scored, and none of a later chunk: training follows each chunk.
        assert {e for e, k in chunk_of_window.items() if k <= c} == windows_seen
        trained.append(c)
    assert windows_seen == set(ends), "every window is scored"
    assert trained == [c for c in range(n_chunks - 1) for _ in range(epochs)]
    whole = n_targets if train_gpt.sliding_stride(stride, seq_len) else n_targets // seq_len * seq_len
    assert (scored_at[:whole] >= 0).all() and (scored_at[whole:] == -1).all()
    assert sums[1] == sums[2] == whole, "every target counts once"
    assert (ttt.chunks, ttt.train_seqs) == (n_chunks, (n_chunks - 1) * chunk // seq_len)
    if n_chunks > 1:  # the cosine over the chunks, at the last chunk trained on
        last_lr = 0.1 * (1 + np.cos(np.pi * (n_chunks - 2) / (n_chunks - 1))) / 2
        assert ttt.optimizer.param_groups[0]["lr"] == pytest.approx(last_lr)


@pytest.mark.parametrize("n_targets, seq_len, stride, chunk", [(343, 16, 5, 64), (343, 16, 0, 96)])
def test_ranks_share_the_windows_and_the_sequences_of_each_step(n_targets, seq_len, stride, chunk):
    one, _, _ = record(n_targets, seq_len, stride, chunk, 1)
    ranks = [record(n_targets, seq_len, stride, chunk, 1, rank, 2)[0] for rank in (0, 1)]
    scored = [{int(row[-1]) for kind, x in events if kind == "score" for row in x} for events in [one] + ranks]
    assert not scored[1] & scored[2] and scored[1] | scored[2] == scored[0]
    steps = [[x for kind, x in events if kind == "train"] for events in [one] + ranks]
    assert len(steps[0]) == len(steps[1]) == len(steps[2]) > 0
    for whole, a, b in zip(*steps):
        assert len(a) == len(b), "every rank trains on as many sequences"
        np.testing.assert_array_equal(whole, np.concatenate([a, b]))


@pytest.fixture(scope="module")
def random_model():
    env = dict(VOCAB_SIZE=str(VOCAB_SIZE), NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2")
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), CPU)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def sums_with(model, tokens, epochs, lr):
    model = copy.deepcopy(model)  # TTT trains it
    ttt = train_gpt.ScoreFirstTTT(model.parameters(), epochs, lr, 128) if epochs else None
    return train_gpt.validation_sums(cpu_run(), model, train_gpt.Validation(tokens, one_byte_each(VOCAB_SIZE), 32, 5),
                                     12, ttt)


def test_no_learning_rate_gives_the_plain_score_and_a_repeating_text_is_learned(random_model):
    pattern = np.random.default_rng(0).integers(4, VOCAB_SIZE, size=37)
    tokens = np.tile(pattern, 30)[: 32 * 20 + 12].astype(np.uint16)  # 651 targets: 6 chunks, a tail
    plain = sums_with(random_model, tokens, 0, 0.0)
    still = sums_with(random_model, tokens, 2, 0.0)
    assert torch.equal(still[1:], plain[1:]) and float(still[0]) == pytest.approx(float(plain[0]), rel=1e-12)
    learned = sums_with(random_model, tokens, 2, 0.2)
    assert torch.equal(learned[1:], plain[1:])
    # The text repeats every 37 tokens: the chunks trained on teach the model the rest of the split.
    assert float(learned[0] / learned[1]) < float(plain[0] / plain[1]) - 1.0, (learned, plain)


# ---- the script ---------------------------------------------------------------------------------

TTT_ENV = dict(EVAL_STRIDE="32", TTT_EPOCHS="1", TTT_LR="0.02", TTT_CHUNK_TOKENS="512")
FINAL = r"^final_int8_zlib_roundtrip_exact val_loss:[\d.]+ val_bpb:([\d.]+)$"


@pytest.mark.slow
def test_a_run_with_ttt_logs_it_and_rescores_to_the_same_number(dataset, tokenizer_path, tmp_path):
    env = tiny_env(dataset, tokenizer_path, RUN_ID="ttt", ITERATIONS="4", WARMUP_STEPS="1", **TTT_ENV)
    run = run_train(tmp_path, env)
    assert run.returncode == 0, run.stderr
    n_targets = sum(train_gpt.read_shard_header(p) for p in dataset.glob("fineweb_val_*.bin")) - 1
    ends = train_gpt.window_ends(n_targets, 64, 32)
    chunks = train_gpt.first_target(ends, len(ends) - 1, 64) // 512 + 1
    assert chunks > 2 and n_targets % 512 and n_targets % 32
    lines = run.stdout.splitlines()
    (i,) = [i for i, line in enumerate(lines) if line.startswith("ttt ")]
    assert lines[i] == f"ttt epochs:1 lr:0.02 chunk_tokens:512 chunks:{chunks} train_seqs:{(chunks - 1) * 8}"
    assert lines[i + 1].startswith("final_int8_zlib_roundtrip val_loss:")
    summary = records.parse_log(tmp_path / "logs" / "ttt.txt")
    (bpb,) = re.findall(FINAL, run.stdout, re.M)
    assert summary.state == "complete" and summary.roundtrip_val_bpb == float(bpb) and summary.eval_time_ms > 0
    artifact = tmp_path / "artifacts" / "ttt_model.int8.ptz"
    again = run_train(tmp_path, dict(env, RUN_ID="ttt_rescore", EVAL_ARTIFACT=str(artifact)))
    assert again.returncode == 0, again.stderr
    assert re.findall(FINAL, again.stdout, re.M) == [bpb], "the same bytes, data and training give the same score"


@pytest.mark.slow
def test_two_processes_score_with_ttt_as_one_does(first_run, dataset, tokenizer_path, tmp_path):
    env = tiny_env(dataset, tokenizer_path, EVAL_ARTIFACT=str(first_run[0] / "artifacts" / "first_model.int8.ptz"),
                   OMP_NUM_THREADS="1", **TTT_ENV)
    runs = dict(off=run_train(tmp_path, dict(env, RUN_ID="off", TTT_EPOCHS="0")),
                one=run_train(tmp_path, dict(env, RUN_ID="one")),
                two=run_train(tmp_path, dict(env, RUN_ID="two"), nproc=2))
    assert all(run.returncode == 0 for run in runs.values()), runs["two"].stderr[-3000:]
    assert "\nttt " not in runs["off"].stdout
    off, one, two = (float(re.findall(FINAL, (tmp_path / "logs" / f"{r}.txt").read_text(), re.M)[0]) for r in runs)
    # Two ranks differ from one only by bf16 rounding (their gradients are summed in another order), far
    # less than what training changes.
    assert abs(one - two) < 0.1 * abs(one - off), (off, one, two)
