"""FA4 (flash-attn-4, CuTe DSL) on this H200: import, causal GQA forward+backward against SDPA, and timing at
train_gpt.py's shapes (12 sequences of 4096, 8 query heads, 4 KV heads, head size 64, bf16)."""
import sys, time, traceback
sys.path += ["/tmp/fa4/nvidia_cutlass_dsl/dsl_packages", "/tmp/fa4"]  # installed packages first
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
B, T, H, KV, D = 12, 4096, 8, 4, 64
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(B, T, h, D, device="cuda", dtype=torch.bfloat16, generator=g) for h in (H, KV, KV))

def sdpa(backend, gqa):
    def f(q, k, v):
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if not gqa:
            kt, vt = kt.repeat_interleave(H // KV, 1), vt.repeat_interleave(H // KV, 1)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa).transpose(1, 2)
    return f

def fwd_bwd(f):
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = f(*ins)
    out.float().square().sum().backward()
    return [out.detach().float()] + [t.grad.float() for t in ins]

def timed(f, n=20):
    for _ in range(3):
        fwd_bwd(f)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n):
        fwd_bwd(f)
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / n

ref = fwd_bwd(sdpa(SDPBackend.FLASH_ATTENTION, False))
cands = {"sdpa_flash_repeat": sdpa(SDPBackend.FLASH_ATTENTION, False),
         "sdpa_cudnn_repeat": sdpa(SDPBackend.CUDNN_ATTENTION, False),
         "sdpa_cudnn_gqa": sdpa(SDPBackend.CUDNN_ATTENTION, True),
         "sdpa_flash_gqa": sdpa(SDPBackend.FLASH_ATTENTION, True)}
try:
    t0 = time.perf_counter()
    from flash_attn.cute import flash_attn_func
    print(f"fa4 import ok {time.perf_counter() - t0:.1f}s", flush=True)
    def fa4(q, k, v):
        out = flash_attn_func(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out
    t0 = time.perf_counter(); fwd_bwd(fa4); torch.cuda.synchronize()
    print(f"fa4 first call (compile) {time.perf_counter() - t0:.1f}s", flush=True)
    cands["fa4_gqa"] = fa4
except Exception:
    traceback.print_exc()
for name, f in cands.items():
    try:
        got = fwd_bwd(f)
        err = max(float((a - b).norm() / b.norm()) for a, b in zip(got, ref))
        print(f"{name}: rel_err_vs_flash {err:.4f} fwd+bwd {timed(f):.2f} ms (per micro-batch; x8 per step, x9 layers)", flush=True)
    except Exception as e:
        print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
