"""Download the published challenge shards and tokenizers from the Hugging Face hub.

    python3 data/download.py --variant sp8192 --train-shards 10

fills ./data/datasets/fineweb10B_sp8192/ (the whole validation split and the first 10 training
shards) and ./data/tokenizers/, the layout train_gpt.py expects (sp8192 is its default, sp1024 the
seed's). sp1024 comes from the challenge's dataset repository willdepueoai/parameter-golf; sp4096
and sp8192 are not there, and come from kevclark/parameter-golf (the shards the SP4096/SP8192
records trained on). Each repository's folder datasets/ has a manifest.json that lists its
variants' shards and tokenizers. Shards are a prefix of one frozen shuffled export, so N shards
are the first N*100M training tokens every participant sees.

Files already present and complete (a shard's header matches its size) are skipped. Each file is
downloaded to a temporary name and renamed only once complete, so an interrupted download never
leaves a file that looks finished. HF_ENDPOINT and HF_TOKEN are honoured as by huggingface_hub.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shards import ShardError, read_header  # noqa: E402

DEFAULT_REPO = "willdepueoai/parameter-golf"
VARIANT_REPOS = {"sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf"}  # the rest: DEFAULT_REPO
DEFAULT_REMOTE_ROOT = "datasets"
DEFAULT_TRAIN_SHARDS = 80  # 8B tokens, more than 10 minutes on 8 GPUs can consume


class DownloadError(Exception):
    pass


class Hub:
    """Files of one dataset repository, fetched over HTTPS from the hub's resolve URLs."""

    def __init__(self, endpoint: str, repo: str, revision: str, remote_root: str, token: str | None):
        self.repo = repo
        self.cache_key = "--".join(part.strip("/").replace("/", "--") for part in (repo, revision, remote_root))
        self.base = f"{endpoint.rstrip('/')}/datasets/{repo}/resolve/{urllib.parse.quote(revision, safe='')}"
        self.remote_root, self.token = remote_root.strip("/"), token

    def url(self, relative: str) -> str:
        return f"{self.base}/{urllib.parse.quote(f'{self.remote_root}/{relative}'.lstrip('/'))}"

    def fetch(self, relative: str, dest: Path) -> None:
        """Streams one file to dest through a temporary name; raises DownloadError."""
        url = self.url(relative)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f, length=1 << 22)
                expected = response.headers.get("Content-Length")
            if expected is not None and tmp.stat().st_size != int(expected):
                raise DownloadError(f"{url}: got {tmp.stat().st_size} of {expected} bytes")
            if dest.suffix == ".bin":
                read_header(tmp)
            os.replace(tmp, dest)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot download {url} ({reason}); check the network, HF_ENDPOINT and HF_TOKEN") from None
        except ShardError as e:
            raise DownloadError(f"{url}: downloaded file is not a valid shard ({e})") from None
        finally:
            tmp.unlink(missing_ok=True)


def is_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix != ".bin":
        return True  # written by rename, so a present file is a whole file
    try:
        read_header(path)
        return True
    except ShardError:
        return False


def find_dataset(manifest: dict, variant: str) -> dict | None:
    return next((d for d in manifest.get("datasets", []) if d.get("name") == f"fineweb10B_{variant}"), None)


def plan(manifest: dict, variant: str, train_shards: int | None, data_dir: Path,
         repo: str = DEFAULT_REPO) -> list[tuple[str, Path]]:
    """(remote path relative to the root, local path) of every file the variant needs."""
    name = f"fineweb10B_{variant}"
    dataset = find_dataset(manifest, variant)
    if dataset is None:
        known = sorted(d.get("name", "?").removeprefix("fineweb10B_") for d in manifest.get("datasets", []))
        raise DownloadError(f"variant {variant} is not in the manifest of {repo}; choose one of {known} "
                            f"(or another --repo)")
    stats = dataset.get("stats") or {}
    n_train, n_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    train_shards = min(n_train, DEFAULT_TRAIN_SHARDS) if train_shards is None else train_shards
    if train_shards > n_train:
        raise DownloadError(f"{variant} has {n_train} training shards on the hub; ask for at most {n_train}")
    tokenizer = next((t for t in manifest.get("tokenizers", []) if t.get("name") == dataset.get("tokenizer_name")), {})
    tokenizer_files = [tokenizer[k] for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not tokenizer_files:
        raise DownloadError(f"the manifest names no tokenizer files for {variant}")
    files = [(f"datasets/{name}/fineweb_val_{i:06d}.bin", data_dir / "datasets" / name / f"fineweb_val_{i:06d}.bin")
             for i in range(n_val)]
    files += [(f"datasets/{name}/fineweb_train_{i:06d}.bin", data_dir / "datasets" / name / f"fineweb_train_{i:06d}.bin")
              for i in range(train_shards)]
    files += [(rel, data_dir / "tokenizers" / Path(rel).name) for rel in tokenizer_files]
    return files


def download(hub: Hub, variant: str, train_shards: int | None, data_dir: Path, workers: int) -> tuple[int, int]:
    """Returns (files downloaded, files already complete)."""
    manifest_path = data_dir / f"manifest.{hub.cache_key}.json"  # one per repository, revision and folder
    cached = manifest_path.is_file()
    while True:
        if not cached:
            hub.fetch("manifest.json", manifest_path)
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            manifest_path.unlink()
            raise DownloadError(f"{manifest_path} was not valid JSON and has been removed; run again") from None
        if find_dataset(manifest, variant) is not None or not cached:
            break
        cached = False  # a cached manifest without the variant may predate it: fetch it again, once
    files = plan(manifest, variant, train_shards, data_dir, hub.repo)
    todo = [(rel, dest) for rel, dest in files if not is_complete(dest)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(hub.fetch, rel, dest) for rel, dest in todo]
        try:
            for i, (future, (rel, _)) in enumerate(zip(futures, todo), 1):
                future.result()
                print(f"  [{i}/{len(todo)}] {rel}", file=sys.stderr, flush=True)
        except DownloadError:
            pool.shutdown(cancel_futures=True)
            raise
    return len(todo), len(files) - len(todo)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="sp8192", help="tokenizer variant: sp8192 (train_gpt.py's default), "
                   "sp1024 (the seed's), sp4096, ...")
    p.add_argument("--train-shards", type=int, default=None,
                   help=f"download the first N training shards (default {DEFAULT_TRAIN_SHARDS}, or all if fewer)")
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent, help="where datasets/ go")
    p.add_argument("--repo", default=None, help=f"dataset repository (default: {DEFAULT_REPO}, or for "
                   f"{', '.join(VARIANT_REPOS)} {', '.join(sorted(set(VARIANT_REPOS.values())))})")
    p.add_argument("--remote-root", default=DEFAULT_REMOTE_ROOT, help="folder of the repository holding manifest.json")
    p.add_argument("--revision", default="main")
    p.add_argument("--workers", type=int, default=4, help="parallel downloads")
    args = p.parse_args(argv)
    if args.train_shards is not None and args.train_shards < 0:
        p.error("--train-shards must be >= 0")
    repo = args.repo or VARIANT_REPOS.get(args.variant, DEFAULT_REPO)
    hub = Hub(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), repo, args.revision, args.remote_root,
              os.environ.get("HF_TOKEN"))
    try:
        fetched, skipped = download(hub, args.variant, args.train_shards, args.data_dir, args.workers)
    except DownloadError as e:
        sys.exit(f"error: {e}")
    print(f"{args.variant}: {fetched} files downloaded, {skipped} already complete, in {args.data_dir}")


if __name__ == "__main__":
    main()
