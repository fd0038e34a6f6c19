"""The artifact of a model shaped as the records' stack (11 layers, 512 wide, MLP 3x, 4 KV heads, sp8192, tied
embedding) with Gaussian weights, exported as the stack exports (blocks int6 at 12.85 sigma, embedding int8),
coded by lzma and by rANS: sizes, times, and whether both load to the same weights. Gaussian rows are not trained
weights (run.sh measures those); they show the coder on values as close to independent as weights get.

    python3 results/rans_cpu/synthetic.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train_gpt as tg  # noqa: E402

torch.manual_seed(0)
dim, layers, mlp, vocab, kv = 512, 11, 3, 8192, 256
state = {"tok_emb.weight": torch.randn(vocab, dim) * 0.02}
for layer in range(layers):
    shapes = {"attn.c_q": (dim, dim), "attn.c_k": (kv, dim), "attn.c_v": (kv, dim), "attn.proj": (dim, dim),
              "mlp.fc": (mlp * dim, dim), "mlp.proj": (dim, mlp * dim)}
    for name, shape in shapes.items():
        state[f"blocks.{layer}.{name}.weight"] = torch.randn(*shape) * 0.02
    for name in ("attn_scale", "mlp_scale"):
        state[f"blocks.{layer}.{name}"] = torch.rand(dim)
    state[f"blocks.{layer}.resid_mix"] = torch.rand(2, dim)
obj, _ = tg.quantize_state_dict(state, 6, 12.85, None, 0.01, embed=(8, 14.0))
sizes, weights = {}, {}
for compressor in ("lzma", "rans"):
    t0 = time.perf_counter()
    blob, _ = tg.serialize_artifact(obj, compressor)
    t1 = time.perf_counter()
    path = Path(f"/tmp/synthetic_stack.{compressor}.ptz")
    path.write_bytes(blob)
    weights[compressor], _, found = tg.load_artifact(str(path))
    t2 = time.perf_counter()
    sizes[compressor] = len(blob)
    print(f"{compressor}: {len(blob)} bytes, export {t1 - t0:.1f} s, load {t2 - t1:.1f} s, loads as {found}")
same = all(torch.equal(weights["lzma"][k], weights["rans"][k]) for k in weights["lzma"])
print(f"rans - lzma: {sizes['rans'] - sizes['lzma']} bytes ({sizes['rans'] / sizes['lzma'] - 1:+.2%}); "
      f"same weights: {same}")
