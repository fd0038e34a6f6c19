"""What an artifact's intN values would cost under richer entropy models than its coder's (COMPRESSOR=rans: one
table of symbol frequencies per tensor). For each kind of matrix: the ideal order-0 size with one table per tensor
(what rans reaches, within ~0.1%, plus its tables), and the size an adaptive coder would reach that starts every
row (or column) from its tensor's table, weighted as PRIOR_COUNTS values, and learns the row's own counts as it
goes (a Dirichlet-multinomial code: achievable, no table per row). The best of a few prior weights is shown.

    python3 tools/artifact_entropy.py artifacts/<RUN_ID>_model.int6.ptz
"""

from __future__ import annotations

import io
import lzma
import re
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt  # noqa: E402


PRIOR_COUNTS = (4, 16, 64, 256)


def entropy_bits(values: np.ndarray) -> float:
    """Order-0 entropy of the values, in bits, times their count: the ideal size of coding them by their histogram."""
    counts = np.unique(values, return_counts=True)[1].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def adaptive_bits(counts: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Bits of coding each row of counts adaptively from Dirichlet(prior) pseudo-counts: the sequence's probability
    under the Dirichlet-multinomial, which depends on the counts only (not on the order of the values)."""
    n, a = counts.sum(-1), prior.sum(-1)
    nats = torch.lgamma(a + n) - torch.lgamma(a) - (torch.lgamma(prior + counts) - torch.lgamma(prior)).sum(-1)
    return nats / np.log(2)


def adaptive_rows_bits(m: np.ndarray) -> float:
    """Every row coded adaptively from the matrix's own histogram (best of PRIOR_COUNTS weights)."""
    symbols, index = np.unique(m, return_inverse=True)
    counts = torch.zeros(m.shape[0], len(symbols), dtype=torch.float64)
    counts.scatter_add_(1, torch.from_numpy(index.reshape(m.shape)), torch.ones(m.shape, dtype=torch.float64))
    p = counts.sum(0) / counts.sum()
    return min(float(adaptive_bits(counts, weight * p).sum()) for weight in PRIOR_COUNTS)


def quantized_tensors(path: Path) -> dict[str, np.ndarray]:
    """The artifact's intN values by tensor name, as train_gpt.py's loader reads them (xz or zlib, rans or not)."""
    blob = path.read_bytes()
    raw = lzma.decompress(blob) if blob.startswith(train_gpt.XZ_MAGIC) else zlib.decompress(blob)
    obj = torch.load(io.BytesIO(raw), map_location="cpu")
    tensors = train_gpt.rans_decode(obj["rans"]) if "rans" in obj else obj["quantized"]
    return {name: t.numpy().astype(np.int64) for name, t in tensors.items()}


def kind_of(name: str) -> str:
    """blocks.3.mlp.fc.weight -> mlp.fc: one row per kind of matrix over all layers."""
    return re.sub(r"^blocks\.\d+\.", "", name).removesuffix(".weight")


def sizes_by_kind(tensors: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """kind -> [number of values, then bytes: per tensor, per row, per column]."""
    sizes: dict[str, list[float]] = defaultdict(lambda: [0.0] * 4)
    for name, q in tensors.items():
        m = q.reshape(q.shape[0], -1) if q.ndim > 1 else q.reshape(1, -1)
        row, column = adaptive_rows_bits(m), adaptive_rows_bits(m.T)
        for i, bits in enumerate((q.size * 8, entropy_bits(q), row, column)):
            sizes[kind_of(name)][i] += bits / 8
    return dict(sizes)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("error: usage: python3 tools/artifact_entropy.py ARTIFACT (a .ptz that train_gpt.py wrote)",
              file=sys.stderr)
        return 2
    try:
        tensors = quantized_tensors(Path(argv[0]))
    except Exception as e:  # not xz or zlib, not a torch file, not ours: one line, as train_gpt.py says it
        print(f"error: cannot read artifact {argv[0]} ({train_gpt.first_line(e)}); give a .ptz a run wrote",
              file=sys.stderr)
        return 2
    if not tensors:
        print(f"error: {argv[0]} has no intN tensors (an export of QUANT_BITS with every matrix kept float?)",
              file=sys.stderr)
        return 2
    sizes = sizes_by_kind(tensors)
    print("| kind | values | per tensor (B) | per row (B) | per column (B) |")
    print("|---|---|---|---|---|")
    for kind, (n, tensor, row, column) in [*sorted(sizes.items()), ("all", [sum(v) for v in zip(*sizes.values())])]:
        print(f"| {kind} | {n:,.0f} | {tensor:,.0f} | {row:,.0f} ({row - tensor:+,.0f}) "
              f"| {column:,.0f} ({column - tensor:+,.0f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
