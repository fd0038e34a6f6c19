"""Verify a dataset folder of challenge shards; exits non-zero on any problem.

    python3 data/verify.py data/datasets/fineweb10B_sp1024 --tokenizer data/tokenizers/fineweb_1024_bpe.model

Checks every fineweb_{val,train}_NNNNNN.bin: header and exact size, numbering without gaps,
token ids below the vocabulary size (from --tokenizer, --vocab-size or the manifest; without one,
every other check still runs), validation starting with BOS and its number of BOS tokens
(= documents). Where the folder has the manifest.json that data/build.py writes, also the token
counts and sha256 of every shard, the vocabulary and document counts it records, and that --tokenizer
is the one the shards were built with. A holdout folder (build.py --holdout-out) is a data folder
like any other, with validation shards only; a folder whose manifest records one is also checked
against that folder's manifest (same counts, same tokenizer) when it is where the manifest says.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shards import BOS_ID, ShardError, read_tokens, sha256_file, shard_name  # noqa: E402


def split_files(folder: Path, split: str, problems: list[str]) -> list[Path]:
    files = sorted(folder.glob(f"fineweb_{split}_*.bin"))
    expected = [shard_name(split, i) for i in range(len(files))]
    if [f.name for f in files] != expected:
        problems.append(f"{split} shards are not numbered 000000..{len(files) - 1:06d} without gaps: "
                        f"{[f.name for f in files][:5]}")
    return files


def check_split(files: list[Path], vocab_size: int | None, manifest_shards: dict, problems: list[str]) -> dict:
    summary = dict(shards=len(files), tokens=0, bos=0, max_id=-1, first_token=None)
    for path in files:
        try:
            tokens = read_tokens(path)
        except ShardError as e:
            problems.append(str(e))
            continue
        if summary["first_token"] is None and tokens.size:
            summary["first_token"] = int(tokens[0])
        summary["tokens"] += int(tokens.size)
        summary["bos"] += int(np.count_nonzero(tokens == BOS_ID))
        top = int(tokens.max()) if tokens.size else -1
        summary["max_id"] = max(summary["max_id"], top)
        if vocab_size is not None and top >= vocab_size:
            problems.append(f"{path}: token id {top} >= vocabulary size {vocab_size}")
        recorded = manifest_shards.get(path.name)
        if recorded is not None:
            if recorded["tokens"] != tokens.size:
                problems.append(f"{path}: {tokens.size} tokens, manifest says {recorded['tokens']}")
            if recorded["sha256"] != sha256_file(path):
                problems.append(f"{path}: sha256 differs from the manifest")
    return summary


def check_holdout(folder: Path, manifest: dict, problems: list[str]) -> dict:
    """The documents this folder's build held back: their folder's manifest must count what this
    one records, with the same tokenizer. Its shards are checked by verifying that folder."""
    held = manifest["holdout"]
    summary = dict(docs=held["docs"], tokens=held["tokens"], folder=Path(os.path.normpath(folder / held["folder"])),
                   found=False)
    path = summary["folder"] / "manifest.json"
    if not path.is_file():  # not copied along, say: nothing to compare with, and no problem here
        return summary
    theirs, summary["found"] = json.loads(path.read_text()), True
    got = {k: theirs["splits"]["val"][k] for k in ("docs", "tokens", "text_bytes")}
    want = {k: held[k] for k in got}
    if got != want:
        problems.append(f"holdout {summary['folder']}: its manifest counts {got}, this one records {want}")
    if theirs["tokenizer"]["sha256"] != manifest["tokenizer"]["sha256"]:
        problems.append(f"holdout {summary['folder']}: built with another tokenizer ({theirs['tokenizer']['name']})")
    return summary


def verify(folder: Path, vocab_size: int | None, val_docs: int | None,
           tokenizer: Path | None = None) -> tuple[list[str], dict]:
    problems: list[str] = []
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    recorded = {s["name"]: s for s in manifest["shards"]} if manifest else {}
    if manifest and tokenizer and sha256_file(tokenizer) != manifest["tokenizer"]["sha256"]:
        problems.append(f"{tokenizer} is not the tokenizer the shards were built with ({manifest['tokenizer']['name']}, "
                        f"sha256 {manifest['tokenizer']['sha256'][:12]}...)")
    if manifest:
        vocab_size = vocab_size or manifest["tokenizer"]["vocab_size"]
        if val_docs is None:
            val_docs = manifest["splits"]["val"]["docs"]

    summaries = {}
    for split in ("val", "train"):
        files = split_files(folder, split, problems)
        if not files and split == "val":
            problems.append(f"{folder} holds no fineweb_val_*.bin shard")
        summaries[split] = check_split(files, vocab_size, recorded, problems)
    if manifest:
        missing = set(recorded) - {p.name for p in folder.glob("fineweb_*.bin")}
        problems += [f"{name}: listed in manifest.json but missing" for name in sorted(missing)]
        for split in ("val", "train"):
            want, got = manifest["splits"][split]["tokens"], summaries[split]["tokens"]
            if want != got:
                problems.append(f"{split} split: {got} tokens, manifest says {want}")
    if manifest and "holdout" in manifest:
        summaries["holdout"] = check_holdout(folder, manifest, problems)
    val = summaries["val"]
    if val["shards"] and val["first_token"] != BOS_ID:
        problems.append(f"the validation split starts with token {val['first_token']}, not BOS ({BOS_ID})")
    if val_docs is not None and val["bos"] != val_docs:
        problems.append(f"the validation split holds {val['bos']} BOS tokens (documents), expected {val_docs}")
    if vocab_size is None:  # the headers, sizes and BOS counts need none
        problems.append(f"token ids not checked: pass --tokenizer or --vocab-size ({folder} has no manifest.json)")
    return problems, summaries


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--tokenizer", type=Path, help="SentencePiece .model: its size is the vocabulary bound")
    p.add_argument("--vocab-size", type=int, help="vocabulary bound, when no tokenizer is given")
    p.add_argument("--val-docs", type=int, help="expected number of validation documents")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        sys.exit(f"error: {args.folder} is not a folder")
    vocab_size = args.vocab_size
    if args.tokenizer:
        import sentencepiece as spm
        vocab_size = int(spm.SentencePieceProcessor(model_file=str(args.tokenizer)).vocab_size())

    problems, summaries = verify(args.folder, vocab_size, args.val_docs, args.tokenizer)
    for split, s in summaries.items():
        if split == "holdout":
            print(f"holdout: {s['docs']:,} documents, {s['tokens']:,} tokens held back from training, in "
                  f"{s['folder']} ({'verify it too' if s['found'] else 'not there: not compared'})")
            continue
        print(f"{split}: {s['shards']} shards, {s['tokens']:,} tokens, {s['bos']:,} BOS (documents), "
              f"max token id {s['max_id']}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"{args.folder}: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'OK'}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
