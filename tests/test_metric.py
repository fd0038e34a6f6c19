"""val_bpb: the byte tables against what the tokenizer decodes, and the script's evaluation
against a plain re-computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_gpt
from conftest import VOCAB_SIZE, cpu_run
from tiny import SPECIAL_WORDS, make_documents

HARD_TEXTS = [
    "Plain words, then digits 1234567890 and 3.14159!",
    " A leading space, then  two spaces and   three.",
    "Emoji 😀🚀 and CJK 数据集 characters fall back to bytes: ΩmegaΩ, naïve café — “quoted” x².",
    "Tabs\tand\nnew lines\n\nand a trailing space ",
    "ｆｕｌｌｗｉｄｔｈ letters and ligatures ﬁ are NFKC-normalized",
    "(parentheses) [brackets] {braces} <angles> #hash @at $dollar %percent ^caret &amp; *star",
    "日本語のテキストと한국어 텍스트",
]


def byte_count(tables: train_gpt.ByteTables, ids: list[int]) -> int:
    t = torch.tensor(ids)
    return int(tables.count(t[:-1], t[1:]).sum())


@pytest.mark.parametrize("text", HARD_TEXTS + make_documents(20, seed=3))
def test_bytes_of_a_document_equal_its_decoded_utf8_length(sp, text):
    tables = train_gpt.build_byte_tables(sp, VOCAB_SIZE, torch.device("cpu"))
    ids = sp.encode(text)
    assert byte_count(tables, [sp.bos_id()] + ids) == len(sp.decode(ids).encode("utf-8"))


def test_bytes_across_document_boundaries_add_up(sp):
    tables = train_gpt.build_byte_tables(sp, VOCAB_SIZE, torch.device("cpu"))
    docs = HARD_TEXTS + SPECIAL_WORDS
    stream = [tok for d in docs for tok in [sp.bos_id()] + sp.encode(d)]
    assert byte_count(tables, stream) == sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in docs)


def test_table_entries(sp):
    tables = train_gpt.build_byte_tables(sp, VOCAB_SIZE, torch.device("cpu"))
    for i in range(4):  # pad, BOS, EOS, unk: boundaries worth 0 bytes
        assert tables.is_boundary[i] and tables.base_bytes[i] == 0
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and all(tables.base_bytes[i] == 1 for i in byte_ids)
    space = sp.piece_to_id("▁")
    assert space != sp.unk_id(), "the tokenizer must have a standalone '▁' piece"
    assert tables.base_bytes[space] == 0 and tables.has_leading_space[space]
    for i in range(sp.vocab_size()):
        if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i):
            continue
        piece = sp.id_to_piece(i)
        assert "▁" not in piece[1:], "the tables assume '▁' only ever leads a piece"
        assert tables.base_bytes[i] == len(piece.removeprefix("▁").encode("utf-8"))
        assert bool(tables.has_leading_space[i]) == piece.startswith("▁")

def plain_val_bpb(model, tokens: np.ndarray, seq_len: int, sp) -> tuple[float, float]:
    """Token by token, in float64, with bytes from the pieces' own text."""
    total_nats, n_bytes = 0.0, 0
    n = (tokens.size - 1) // seq_len
    for s in range(n):
        window = torch.from_numpy(tokens[s * seq_len: (s + 1) * seq_len + 1].astype(np.int64))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.logits(window[None, :-1])[0]
        logp = F.log_softmax(logits.double(), dim=-1)
        for pos in range(seq_len):
            prev, target = int(window[pos]), int(window[pos + 1])
            total_nats -= float(logp[pos, target])
            if sp.is_control(target) or sp.is_unknown(target):
                continue
            if sp.is_byte(target):
                n_bytes += 1
                continue
            text = sp.id_to_piece(target).replace("▁", " ")
            if text.startswith(" ") and sp.is_control(prev):  # no space is written after BOS
                text = text[1:]
            n_bytes += len(text.encode("utf-8"))
    tokens_scored = n * seq_len
    return total_nats / tokens_scored, total_nats / math.log(2) / n_bytes


@pytest.fixture(scope="module")
def trained_looking_model():
    env = dict(VOCAB_SIZE=str(VOCAB_SIZE), NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2")
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():  # away from the zero init, so every part of the network matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_val_bpb_equals_plain_recomputation(trained_looking_model, dataset, sp):
    seq_len = 32
    _, val_files = train_gpt.find_shards(str(dataset))
    tokens = train_gpt.load_validation_tokens(val_files, seq_len, VOCAB_SIZE)
    tables = train_gpt.build_byte_tables(sp, VOCAB_SIZE, torch.device("cpu"))
    val = train_gpt.Validation(tokens, tables, seq_len, batch_seqs=7)
    val_loss, val_bpb = train_gpt.eval_val(cpu_run(), trained_looking_model, val, 0)
    want_loss, want_bpb = plain_val_bpb(trained_looking_model, tokens, seq_len, sp)
    assert val_loss == pytest.approx(want_loss, rel=1e-5)
    assert val_bpb == pytest.approx(want_bpb, rel=1e-5)
    assert 1.0 < val_bpb < 20.0


@pytest.mark.parametrize("world_size", [2, 3, 8])
def test_ranks_cover_every_target_once(trained_looking_model, dataset, sp, world_size):
    seq_len = 32
    _, val_files = train_gpt.find_shards(str(dataset))
    tokens = train_gpt.load_validation_tokens(val_files, seq_len, VOCAB_SIZE)
    assert (tokens.size - 1) % seq_len, "the split ends in a partial sequence"
    tables = train_gpt.build_byte_tables(sp, VOCAB_SIZE, torch.device("cpu"))
    val = train_gpt.Validation(tokens, tables, seq_len, 5)
    whole = train_gpt.validation_sums(cpu_run(), trained_looking_model, val, 0, None)
    parts = sum(train_gpt.validation_sums(cpu_run(r, world_size), trained_looking_model, val, 0, None)
                for r in range(world_size))
    assert whole[1] == parts[1] == (tokens.size - 1) // seq_len * seq_len  # every whole sequence's targets, once
    assert whole[2] == parts[2]
    assert float(parts[0]) == pytest.approx(float(whole[0]), rel=1e-6)


@pytest.mark.parametrize("n, seq_len, stride", [(64, 16, 4), (67, 16, 5), (160, 32, 31), (33, 32, 1), (96, 32, 0),
                                                  (100, 32, 40)])
def test_windows_score_every_target_once_with_the_promised_context(n, seq_len, stride):
    ends = train_gpt.window_ends(n, seq_len, stride)
    sliding = 0 < stride < seq_len  # a longer stride means non-overlapping windows, as 0 does
    counts = np.zeros(n, dtype=int)
    for k, end in enumerate(ends):
        start = ends[k - 1] if k else 0
        assert end - seq_len >= 0 and end <= n, "windows stay inside the split"
        counts[max(start, end - seq_len): end] += 1
        if k and sliding:
            assert start - (end - seq_len) >= seq_len - stride, "at least seq_len - stride tokens of context"
    assert (counts == 1).all() if sliding else (counts[: n // seq_len * seq_len] == 1).all() and len(ends) == n // seq_len


def plain_sliding_loss(model, tokens: np.ndarray, seq_len: int, stride: int) -> float:
    total, scored_until = 0.0, 0
    for end in train_gpt.window_ends(tokens.size - 1, seq_len, stride):
        window = torch.from_numpy(tokens[end - seq_len: end + 1].astype(np.int64))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.logits(window[None, :-1])[0]
        logp = F.log_softmax(logits.double(), dim=-1)
        for pos in range(seq_len):
            if end - seq_len + pos >= scored_until:
                total -= float(logp[pos, int(window[pos + 1])])
        scored_until = end
    return total


@pytest.mark.parametrize("stride", [0, 12])
def test_batch_size_changes_nothing_but_the_batching(trained_looking_model, dataset, sp, stride):
    """Short last batches are padded with windows that must count nowhere."""
    _, val_files = train_gpt.find_shards(str(dataset))
    tokens = train_gpt.load_validation_tokens(val_files, 32, VOCAB_SIZE)[: 32 * 11 + 1]
    tables = train_gpt.build_byte_tables(sp, VOCAB_SIZE, torch.device("cpu"))
    one, seven = (train_gpt.validation_sums(cpu_run(), trained_looking_model, train_gpt.Validation(tokens, tables, 32, b),
                                            stride, None) for b in (1, 7))
    assert one[1] == seven[1] == tokens.size - 1 and one[2] == seven[2]
    assert float(seven[0]) == pytest.approx(float(one[0]), rel=1e-5)


@pytest.mark.parametrize("world_size, tail", [(1, 0), (3, 0), (1, 11), (3, 11)])
def test_sliding_window_sums_against_plain_recomputation(trained_looking_model, dataset, sp, world_size, tail):
    seq_len, stride = 32, 12
    _, val_files = train_gpt.find_shards(str(dataset))
    tokens = train_gpt.load_validation_tokens(val_files, seq_len, VOCAB_SIZE)[: 32 * 20 + 1 + tail]
    tables = train_gpt.build_byte_tables(sp, VOCAB_SIZE, torch.device("cpu"))
    whole = train_gpt.validation_sums(cpu_run(), trained_looking_model,
                                      train_gpt.Validation(tokens[: 32 * 20 + 1], tables, seq_len, 5), 0, None)
    sliding = sum(train_gpt.validation_sums(cpu_run(r, world_size), trained_looking_model,
                                            train_gpt.Validation(tokens, tables, seq_len, 5), stride, None)
                  for r in range(world_size))
    # Sliding windows score every target, the tail after the last whole sequence included.
    assert sliding[1] == tokens.size - 1 == whole[1] + tail
    tail_ids = torch.from_numpy(tokens[tokens.size - 1 - tail:].astype(np.int64))  # the tail and the token before it
    assert sliding[2] == whole[2] + int(tables.count(tail_ids[:-1], tail_ids[1:]).sum())
    assert float(sliding[0]) == pytest.approx(plain_sliding_loss(trained_looking_model, tokens, seq_len, stride),
                                              rel=1e-6)
    assert float(sliding[0]) != pytest.approx(float(whole[0]), rel=1e-4)  # more context, another number
