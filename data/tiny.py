"""A tiny synthetic dataset, to try train_gpt.py on a CPU in seconds with no download.

    python3 data/tiny.py      # data/datasets/tiny_sp512/ and data/tokenizers/tiny_512.model

Invents documents (a word-level Markov chain over made-up words, which a model can learn, so a
short run lowers the loss), trains a 512-piece SentencePiece tokenizer on the training documents
with the challenge's settings and writes the shards and manifest.json, both by data/build.py; then
prints the command that trains on them. tests/ build their data from the same documents.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402

VOCAB_SIZE = 512
# What the tokenizer and the byte counts must cope with: digits, byte-fallback characters (emoji,
# CJK), accents, punctuation, runs of spaces, leading spaces and line breaks.
SPECIAL_WORDS = ["😀", "数据集", "naïve", "café", "Ωmega", "—", "“quoted”", "3.14159", "x²", "🚀🚀"]
# A model that trains end to end in about 15 s on two idle CPU cores (40 steps of 0.25 s, then the
# export and the score), at the defaults' schedules (budget fractions of ITERATIONS) and learning
# rates. COMPILE=0: compiling would take longer than training; WARMUP_STEPS only primes compiled kernels.
TRAIN_SETTINGS = dict(COMPILE="0", NUM_LAYERS="2", MODEL_DIM="128", NUM_HEADS="4", NUM_KV_HEADS="2",
                      TRAIN_SEQ_LEN="128", TRAIN_BATCH_TOKENS="8192", VAL_BATCH_SIZE="8192", ITERATIONS="40",
                      WARMUP_STEPS="0", TRAIN_LOG_EVERY="10", MAX_WALLCLOCK_SECONDS="0", TTT_EPOCHS="0")


def make_documents(n: int, seed: int) -> list[str]:
    """Documents from a word-level Markov chain over invented words: a model can learn it, so a
    short training run must lower the loss."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "men", "sa", "lo", "pe", "dun", "vi", "ra", "no", "tel", "mu", "shi", "ba"]
    vocab = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(1500)})
    successors = {w: rng.sample(vocab, 4) for w in vocab}
    docs = []
    for _ in range(n):
        word, sentences = rng.choice(vocab), []
        for _ in range(rng.randint(2, 6)):
            words = []
            for _ in range(rng.randint(4, 12)):
                word = rng.choice(successors[word]) if rng.random() < 0.9 else rng.choice(vocab)
                words.append(word)
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
            if rng.random() < 0.15:
                words.append(rng.choice(SPECIAL_WORDS))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ";  "]))
        text = (" " if rng.random() < 0.2 else "") + " ".join(sentences)
        docs.append(text + ("\n\nP.S. " + rng.choice(vocab) if rng.random() < 0.2 else ""))
    return docs


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def train_command(out: Path, tokenizer: Path) -> str:
    env = dict(DATA_PATH=str(out), TOKENIZER_PATH=str(tokenizer), VOCAB_SIZE=str(VOCAB_SIZE), **TRAIN_SETTINGS)
    script = os.path.relpath(Path(__file__).resolve().parents[1] / "train_gpt.py")
    return " ".join(f"{k}={v}" for k, v in env.items()) + f" python3 {script}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("data/datasets/tiny_sp512"), help="dataset folder to write")
    p.add_argument("--tokenizer", type=Path, default=Path("data/tokenizers/tiny_512"), metavar="PREFIX",
                   help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--docs", type=int, default=3000, help="documents in all")
    p.add_argument("--val-docs", type=int, default=200, help="the first N form the validation split")
    p.add_argument("--seed", type=int, default=0, help="seed of the invented words and documents")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier tiny dataset and tokenizer")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_jsonl(Path(tmp) / "docs.jsonl", make_documents(args.docs, args.seed))
        build.main([str(corpus), "--out", str(args.out), "--train-tokenizer", str(args.tokenizer), "--vocab-size",
                    str(VOCAB_SIZE), "--val-docs", str(args.val_docs), "--shard-tokens", "100000", "--quiet",
                    *(["--overwrite"] if args.overwrite else [])])
    print("train on it (about 15 s on two idle CPU cores):")
    print(train_command(args.out, Path(f"{args.tokenizer}.model")))


if __name__ == "__main__":
    main()
