"""The rANS coder against lzma on a run's trained weights, on the CPU: for each export point, the artifact's size
by each compressor, and the int8 values alone (what rANS codes) by lzma, by rANS, and their order-0 entropy (the
bound for a coder of independent symbols). The rest of an artifact (scales, fp16 small tensors) is lzma in both.

    python3 results/rans_cpu/trained.py artifacts/<RUN_ID>_model.pt
"""
import lzma
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train_gpt as tg  # noqa: E402

state = torch.load(sys.argv[1], map_location="cpu")
print(f"weights: {sys.argv[1]}, {sum(t.numel() for t in state.values())} values")
for bits, sigmas, embed_bits in ((6, 12.85, 8), (6, 12.85, 7), (7, 6.0, 8), (8, 0.0, 8)):
    obj, _ = tg.quantize_state_dict(state, bits, sigmas, None, 0.01, embed=(embed_bits, 14.0))
    sizes = {c: len(tg.serialize_artifact(obj, c)[0]) for c in ("lzma", "rans")}
    values = list(obj["quantized"].values())
    entropy = 0.0
    for q in values:
        p = np.bincount(q.numpy().ravel().astype(np.int64) + 128) / q.numel()
        entropy -= float((p[p > 0] * np.log2(p[p > 0])).sum()) * q.numel() / 8
    by_lzma = len(lzma.compress(b"".join(q.numpy().tobytes() for q in values), preset=9))
    coded = tg.rans_encode(obj["quantized"])
    by_rans = 2 * coded["words"].numel() + 4 * coded["states"].numel()
    print(f"int{bits} {sigmas} sigma, embedding int{embed_bits}: artifact lzma {sizes['lzma']} rans {sizes['rans']} "
          f"({sizes['rans'] - sizes['lzma']:+d}, {sizes['rans'] / sizes['lzma'] - 1:+.2%}); int8 values "
          f"({sum(q.numel() for q in values)} in {len(values)} tensors): entropy {entropy:.0f}, "
          f"lzma {by_lzma} ({by_lzma / entropy - 1:+.2%}), rans {by_rans} ({by_rans / entropy - 1:+.2%})")
