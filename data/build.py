"""Build challenge-format token shards from JSON-lines documents.

    # tokenize with an existing SentencePiece model (the BENCH.md split: 2,500 validation docs)
    python3 data/build.py --out data/datasets/bench_sp1024 \\
        --tokenizer data/tokenizers/fineweb_1024_bpe.model --val-docs 2500 corpus/docs_*.jsonl.xz

    # or train a tokenizer first, with the challenge's trainer settings
    python3 data/build.py --out data/datasets/mine_sp2048 --train-tokenizer data/tokenizers/mine_2048 \\
        --vocab-size 2048 --val-docs 2500 corpus/docs_*.jsonl.xz

Documents are read in file order (plain, .gz, .xz, .bz2 or .zst JSON lines with a "text" field);
the first --val-docs become the validation split, the rest training. With --holdout-docs N and
--holdout-out DIR, the last N documents are held back from training and written to DIR as a data
folder of their own (its validation split, its own manifest): a second validation set that
train_gpt.py scores with DATA_PATH=DIR EVAL_ARTIFACT=... . Each document is written as
BOS followed by its tokens. The tool streams (the corpus is never held in memory), encodes on all
cores, and is deterministic: the same inputs give the same shard and manifest bytes. It writes
manifest.json last, with counts and sha256 of the inputs, the tokenizer and every shard;
data/verify.py checks a folder against it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shards import (BOS_ID, DEFAULT_SHARD_TOKENS, HEADER_BYTES, MAGIC, TRAINER_SETTINGS, VERSION,  # noqa: E402
                    iter_documents, sha256_file, shard_name, train_tokenizer, write_shard)


class ShardWriter:
    """Fills fixed-size shards split by split; documents may straddle two shards."""

    def __init__(self, out_dir: Path, shard_tokens: int):
        self.out_dir, self.shard_tokens = out_dir, shard_tokens
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.fill, self.split = 0, None
        self.shards: list[dict] = []

    def add(self, split: str, tokens: np.ndarray) -> None:
        if split != self.split:
            self.flush()
            self.split = split
        while tokens.size:
            k = min(tokens.size, self.shard_tokens - self.fill)
            self.buffer[self.fill: self.fill + k] = tokens[:k]
            self.fill, tokens = self.fill + k, tokens[k:]
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        index = sum(s["split"] == self.split for s in self.shards)
        name = shard_name(self.split, index)
        write_shard(self.out_dir / name, self.buffer[: self.fill])
        self.shards.append(dict(name=name, split=self.split, tokens=self.fill))
        self.fill = 0


def batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetched(items: Iterator, depth: int = 4) -> Iterator:
    """Runs the producer in a background thread, so that decompression and JSON parsing overlap
    the encoding (SentencePiece releases the GIL while it encodes)."""
    q: queue.Queue = queue.Queue(depth)
    done = object()

    def produce() -> None:
        try:
            for item in items:
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)

    threading.Thread(target=produce, daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def hold_back_last(items: Iterator, n: int) -> Iterator[tuple]:
    """Yields (item, held) in input order, held for the last n items. The inputs may be a stream of
    unknown length, so it buffers n items and lets one go only when n later ones exist."""
    tail: deque = deque()
    for item in items:
        tail.append(item)
        if len(tail) > n:
            yield tail.popleft(), False
    for item in tail:
        yield item, True


def encode_corpus(inputs: list[Path], sp, writer: ShardWriter, val_docs: int, threads: int,
                  batch_docs: int, progress: bool, holdout: ShardWriter | None = None,
                  holdout_docs: int = 0) -> dict:
    """Streams documents through the tokenizer into the writer (the last holdout_docs into the
    holdout writer, as its validation split); returns per-split counts."""
    read_counts: dict = {}
    splits = {s: dict(docs=0, tokens=0, text_bytes=0) for s in ("val", "train", "holdout")}
    t0 = last_report = time.perf_counter()
    n_docs = 0
    docs = hold_back_last(iter_documents(inputs, read_counts), holdout_docs)
    for batch in prefetched(batched(docs, batch_docs)):
        texts = [text for text, _ in batch]
        for (text, held), ids in zip(batch, sp.encode(texts, num_threads=threads)):
            split = "val" if n_docs < val_docs else "holdout" if held else "train"
            tokens = np.empty(len(ids) + 1, dtype=np.uint16)
            tokens[0], tokens[1:] = BOS_ID, ids
            if split == "holdout":
                holdout.add("val", tokens)  # the holdout folder's validation split
            else:
                writer.add(split, tokens)
            stats = splits[split]
            stats["docs"] += 1
            stats["tokens"] += tokens.size
            stats["text_bytes"] += len(text.encode("utf-8"))
            n_docs += 1
        now = time.perf_counter()
        if progress and now - last_report > 5:
            mb = sum(s["text_bytes"] for s in splits.values()) / 1e6
            print(f"  {n_docs:,} docs  {mb:,.1f} MB of text  {mb / (now - t0):.2f} MB/s", file=sys.stderr, flush=True)
            last_report = now
    writer.flush()
    if holdout:
        holdout.flush()
    if n_docs <= val_docs + holdout_docs:
        held = f" + --holdout-docs {holdout_docs}" if holdout_docs else ""
        raise SystemExit(f"error: the inputs hold {n_docs} documents, not more than --val-docs {val_docs}{held}: "
                         f"no training documents would be left")
    return dict(splits=splits, empty_docs_skipped=read_counts["empty_docs"], seconds=time.perf_counter() - t0)


def training_documents(inputs: list[Path], val_docs: int, limit: int, holdout_docs: int = 0) -> Iterator[str]:
    """The documents a tokenizer may learn from: training documents only, never validation or holdout."""
    for i, (text, held) in enumerate(hold_back_last(iter_documents(inputs), holdout_docs)):
        if held or (limit and i >= val_docs + limit):
            return
        if i >= val_docs:
            yield text


def claim_folder(folder: Path, flag: str, overwrite: bool) -> str | None:
    """Creates folder; shards or a manifest already there are an error, or removed with --overwrite,
    so that a build never mixes with an older one. Returns the error, if any."""
    folder.mkdir(parents=True, exist_ok=True)
    old = sorted(folder.glob("fineweb_*.bin")) + sorted(folder.glob("manifest.json"))
    if old and not overwrite:
        return f"{folder} already holds {old[0].name} and more; pass --overwrite or choose another {flag}"
    for path in old:
        path.unlink()
    return None


def make_manifest(inputs: list[Path], model_path: Path, sp, args, splits: dict, empty_docs: int,
                  shards: list[dict], folder: Path) -> dict:
    for shard in shards:
        shard["sha256"] = sha256_file(folder / shard["name"])
    return dict(
        format=dict(magic=MAGIC, version=VERSION, header_bytes=HEADER_BYTES, dtype="<u2", bos_id=BOS_ID, eos=False),
        inputs=[dict(name=p.name, bytes=p.stat().st_size, sha256=sha256_file(p)) for p in inputs],
        tokenizer=dict(name=model_path.name, sha256=sha256_file(model_path), vocab_size=int(sp.vocab_size()),
                       trained_here=bool(args.train_tokenizer),
                       trainer_settings=TRAINER_SETTINGS if args.train_tokenizer else None,
                       training_docs=(args.tokenizer_docs or "all training documents") if args.train_tokenizer else None),
        val_docs=splits["val"]["docs"], shard_tokens=args.shard_tokens,
        splits=splits, empty_docs_skipped=empty_docs, shards=shards)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="JSON-lines files, read in the order given")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", type=Path, help="existing SentencePiece .model to encode with")
    tok.add_argument("--train-tokenizer", type=Path, metavar="PREFIX",
                     help="train a tokenizer first; writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, help="vocabulary size of the tokenizer to train")
    p.add_argument("--tokenizer-docs", type=int, default=0,
                   help="train the tokenizer on the first N training documents (default: all)")
    p.add_argument("--val-docs", type=int, default=50_000, help="first N documents form the validation split")
    p.add_argument("--holdout-docs", type=int, metavar="N",
                   help="hold the last N documents back from training (needs --holdout-out)")
    p.add_argument("--holdout-out", type=Path, metavar="DIR",
                   help="data folder to write the held-back documents to, as its validation split")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="encoding threads")
    p.add_argument("--batch-docs", type=int, default=2048, help="documents per encoding batch")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)

    import sentencepiece as spm

    for path in args.inputs:
        if not path.is_file():
            p.error(f"input {path} does not exist")
    if args.train_tokenizer and not args.vocab_size:
        p.error("--train-tokenizer needs --vocab-size")
    if args.val_docs < 0 or args.shard_tokens <= 0:
        p.error("--val-docs must be >= 0 and --shard-tokens > 0")
    if (args.holdout_docs is None) != (args.holdout_out is None):
        p.error("--holdout-docs N and --holdout-out DIR go together: pass both, or neither")
    if args.holdout_out and args.holdout_docs <= 0:
        p.error(f"--holdout-docs must be > 0 (got {args.holdout_docs}); leave out both holdout flags for none")
    if args.holdout_out and args.holdout_out.resolve() == args.out.resolve():
        p.error(f"--holdout-out {args.holdout_out} is the --out folder; choose another folder for the holdout")
    for folder, flag in ((args.out, "--out"), (args.holdout_out, "--holdout-out")):
        if folder and (error := claim_folder(folder, flag, args.overwrite)):
            p.error(error)

    t0 = time.perf_counter()
    if args.train_tokenizer:
        model_path = Path(f"{args.train_tokenizer}.model")
        vocab_path = Path(f"{args.train_tokenizer}.vocab")
        if (model_path.exists() or vocab_path.exists()) and not args.overwrite:
            p.error(f"{model_path} already exists; pass --overwrite to replace it, or choose another PREFIX")
        if not args.quiet:
            print(f"training a {args.vocab_size}-piece tokenizer", file=sys.stderr)
        # Trained under a temporary name, then renamed: no half-written tokenizer under the real one.
        tmp_prefix = args.train_tokenizer.with_name(f".{args.train_tokenizer.name}.tmp-{os.getpid()}")
        docs = training_documents(args.inputs, args.val_docs, args.tokenizer_docs, args.holdout_docs or 0)
        first = next(docs, None)
        if first is None:  # SentencePiece would stop with a traceback
            p.error(f"no training documents to train the tokenizer on: the inputs hold no more than --val-docs "
                    f"{args.val_docs} + --holdout-docs {args.holdout_docs or 0} documents")
        trained = train_tokenizer(itertools.chain([first], docs), args.vocab_size, tmp_prefix)
        os.replace(trained, model_path)
        os.replace(f"{tmp_prefix}.vocab", vocab_path)
    else:
        if not args.tokenizer.is_file():
            p.error(f"--tokenizer {args.tokenizer} does not exist")
        model_path = args.tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    if sp.bos_id() != BOS_ID or sp.vocab_size() > 2**16:
        p.error(f"{model_path}: BOS must be id {BOS_ID} and the vocabulary must fit in uint16")

    writer = ShardWriter(args.out, args.shard_tokens)
    holdout = ShardWriter(args.holdout_out, args.shard_tokens) if args.holdout_out else None
    counts = encode_corpus(args.inputs, sp, writer, args.val_docs, args.threads, args.batch_docs, not args.quiet,
                           holdout, args.holdout_docs or 0)
    splits, empty = counts["splits"], counts["empty_docs_skipped"]
    val, train, held = splits["val"], splits["train"], splits["holdout"]
    manifest = make_manifest(args.inputs, model_path, sp, args, dict(val=val, train=train), empty,
                             writer.shards, args.out)
    if holdout:
        # Each folder names the other relative to itself, so that the two can move together.
        held_rel = os.path.relpath(args.holdout_out.resolve(), args.out.resolve())
        manifest["holdout"] = dict(folder=held_rel, docs=held["docs"], tokens=held["tokens"],
                                   text_bytes=held["text_bytes"],
                                   which=f"the last {held['docs']} documents of the inputs, not trained on")
        held_manifest = make_manifest(args.inputs, model_path, sp, args,
                                      dict(val=held, train=dict(docs=0, tokens=0, text_bytes=0)), empty,
                                      holdout.shards, args.holdout_out)
        held_manifest["held_back_from"] = os.path.relpath(args.out.resolve(), args.holdout_out.resolve())
        (args.holdout_out / "manifest.json").write_text(json.dumps(held_manifest, indent=1) + "\n")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    text_mb = sum(s["text_bytes"] for s in splits.values()) / 1e6
    held_line = (f"; holdout {held['docs']:,} docs {held['tokens']:,} tokens in {len(holdout.shards)} shard(s) "
                 f"at {args.holdout_out}") if holdout else ""
    print(f"wrote {len(writer.shards)} shards to {args.out}: val {val['docs']:,} docs {val['tokens']:,} tokens; "
          f"train {train['docs']:,} docs {train['tokens']:,} tokens{held_line}; encoded {text_mb:,.1f} MB of text in "
          f"{counts['seconds']:.1f} s ({text_mb / counts['seconds']:.2f} MB/s, {args.threads} threads); "
          f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
