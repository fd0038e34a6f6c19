"""The challenge's token-shard format and tokenizer settings, shared by the data tools.

A shard is 256 little-endian int32 header words -- [0] magic 20240520, [1] version 1,
[2] token count n, the rest zero -- followed by n little-endian uint16 token ids; the file is
exactly 1024 + 2n bytes. A dataset folder holds fineweb_val_NNNNNN.bin (the validation split:
the first documents) and fineweb_train_NNNNNN.bin (the rest), each document written as BOS
followed by its tokens, no EOS. train_gpt.py reads the same format with its own reader, so that
it stays one standalone file; tests/test_data_tools.py checks that the two agree.

Published sizes, for orientation: sp1024 has 62,021,632 validation tokens (50,000 documents) and
80 training shards of 100,000,000 tokens (8 B tokens); a shard is 200,001,024 bytes.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

MAGIC, VERSION = 20240520, 1
HEADER_BYTES = 256 * 4
DEFAULT_SHARD_TOKENS = 100_000_000
BOS_ID = 1

# SentencePiece BPE trainer settings of the challenge's tokenizers (SPEC.md, "data export").
TRAINER_SETTINGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    hard_vocab_limit=False,
)


class ShardError(ValueError):
    """A shard file that does not follow the format."""


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def read_header(path: Path) -> int:
    """Checks header and file size; returns the token count."""
    path = Path(path)
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    if header.size != 256 or header[0] != MAGIC or header[1] != VERSION:
        raise ShardError(f"{path}: bad header (want magic {MAGIC}, version {VERSION})")
    n_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * n_tokens
    size = path.stat().st_size
    if n_tokens < 0 or size != expected:
        raise ShardError(f"{path}: {size} bytes, but the header's {n_tokens} tokens need {expected}")
    return n_tokens


def read_tokens(path: Path) -> np.ndarray:
    n_tokens = read_header(path)
    return np.fromfile(path, dtype="<u2", count=n_tokens, offset=HEADER_BYTES)


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Writes atomically: a reader never sees a half-written file under the final name."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ShardError(f"{path}: token ids must fit in uint16")
    header = np.zeros(256, dtype="<i4")
    header[:3] = MAGIC, VERSION, tokens.size
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def open_text(path: Path) -> io.TextIOBase:
    """Opens plain, .gz, .xz, .bz2 or .zst JSON-lines files as text."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    if suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError:
            raise SystemExit(f"error: {path} is zstd-compressed; install zstandard (pip install zstandard)") from None
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def iter_documents(paths: Iterable[Path], counts: dict | None = None) -> Iterator[str]:
    """Yields the "text" of every JSON line, in file order. Empty documents are skipped and
    counted in counts["empty_docs"]."""
    counts = {} if counts is None else counts
    counts.setdefault("empty_docs", 0)
    for path in paths:
        with open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SystemExit(f"error: {path}:{line_no} is not a JSON object with a \"text\" field") from None
                if text:
                    yield text
                else:
                    counts["empty_docs"] += 1


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_prefix: Path) -> Path:
    """Trains a SentencePiece BPE model with the challenge's settings; returns the .model path.
    Documents are fed as their lines: SentencePiece skips any "sentence" longer than
    max_sentence_length bytes, and no piece crosses a line break anyway."""
    import sentencepiece as spm

    def lines() -> Iterator[str]:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    yield line

    Path(model_prefix).parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=lines(), model_prefix=str(model_prefix),
                                   vocab_size=vocab_size, num_threads=os.cpu_count() or 1,
                                   minloglevel=2, **TRAINER_SETTINGS)
    return Path(f"{model_prefix}.model")
