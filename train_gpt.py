"""Parameter-golf record script: "Training Opt Seq4096 v1", rebuilt as one readable file.

Trains an 11-layer GPT (the records' stack; the seed: 9 layers) on FineWeb token shards under a wallclock cap, exports
it quantized and compressed (int6 by GPTQ + rans; the seed: int8+zlib) and scores the round-tripped artifact in bits
per byte (val_bpb) on the full validation split, in sliding windows. Every knob is an environment variable. Runs under
`torchrun --standalone --nproc_per_node=N train_gpt.py` (N in 1, 2, 4, 8) or plain `python3`, on CUDA or the CPU."""

from __future__ import annotations

import copy
import io
import lzma
import math
import os
import random
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP


class ConfigError(Exception):
    """A problem with the run's inputs, reported as one line that names the fix."""


def exit_with(error: ConfigError):
    """Says a configuration error in one line and exits with 2, once for all ranks."""
    rank = os.environ.get("RANK") or "0"
    if rank != "0":     # every rank finds the same problem: rank 0 says it, and torchrun stops this
        time.sleep(10)  # one meanwhile; a rank still alive found one that rank 0 did not
    print(f"error: {error}" if rank == "0" else f"error (rank {rank}): {error}", file=sys.stderr, flush=True)
    sys.exit(2)


def first_line(e: Exception) -> str:
    """A library's error, cut to fit inside a one-line ConfigError."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


# -----------------------------------------------------------------------------
# HYPERPARAMETERS
# Each attribute below is read from the environment variable of the same name in upper case; the value written here
# is the record's default. One table, read once when the object is built.
# -----------------------------------------------------------------------------
def parse_env_value(var: str, raw: str, kind: type) -> object:
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    try:
        return words[raw.strip().lower()] if kind is bool else kind(raw)
    except (KeyError, ValueError):
        expected = {bool: "0 or 1", int: "an integer", float: "a number", str: "a string"}[kind]
        raise ConfigError(f"{var}={raw!r} is not {expected}; set {var} to {expected}") from None


class Hyperparameters:
    # Data, tokenizer and run identity.
    data_path = "./data/datasets/fineweb10B_sp8192"  # the seed: ..._sp1024
    tokenizer_path = "./data/tokenizers/fineweb_8192_bpe.model"  # the seed: fineweb_1024_bpe.model
    run_id = ""  # empty: a fresh, unique id per run
    seed = 1337
    eval_artifact = ""  # path of an artifact (.int8.ptz, .int6.ptz, ...) to score instead of training

    # Validation and logging cadence. Validation always covers the whole validation split.
    val_batch_size = 524_288
    eval_stride = 256  # the final score's windows start every EVAL_STRIDE tokens; 0 or >= TRAIN_SEQ_LEN: none (seed)
    ttt_epochs = 3  # > 0: test-time training, this many SGD steps on each chunk of targets once scored
    ttt_lr = 0.005  # its learning rate, decayed over the chunks as a cosine
    ttt_chunk_tokens = 32768  # targets per chunk
    val_loss_every = 1000
    train_log_every = 200

    # Length of training.
    iterations = 20000
    warmdown_iters = 3000
    warmdown_frac = 0.357  # > 0: warm down over this last fraction of the budget; 0: over WARMDOWN_ITERS steps (seed)
    warmup_steps = 20
    train_batch_tokens = 393_216
    train_seq_len = 4096
    max_wallclock_seconds = 600.0  # 0: no cap

    # Model shape.
    vocab_size = 8192  # the seed: 1024
    num_layers = 11  # the seed: 9
    model_dim = 512
    num_heads = 8
    num_kv_heads = 4
    mlp_mult = 3  # the seed: 2
    tie_embeddings = True
    rope_base = 10000.0
    logit_softcap = 30.0
    qk_gain_init = 1.5
    mlp_leaky_slope = 0.0  # MLP activation leaky_relu(x, slope)^2; 0: relu^2 (the seed)
    rope_dims = 16  # RoPE rotates only the first ROPE_DIMS dimensions of each head (the records: 16 of 64); 0: all
    ln_scale = True  # block l's attention and MLP read the normed stream times 1/sqrt(l + 1)
    xsa_layers = 11  # XSA in the last this many blocks (all if >= NUM_LAYERS): heads drop their own value's direction
    smear_gate = True  # each position's embedding mixes in the previous position's, by a learned per-channel gate
    parallel_layers = 0  # the last this many blocks run attention and MLP side by side (GPT-J); 0: in sequence
    recur_layers = 0  # > 0: depth recurrence, blocks RECUR_START.. (this many) run twice once it switches on
    recur_start = 3  # the first block of the repeated run
    recur_from_frac = 0.35  # recurrence switches on after this fraction of the budget (the records': 0.35)

    # Optimizers.
    embed_lr = 0.6
    head_lr = 0.008
    tied_embed_lr = 0.030
    tied_embed_init_std = 0.005
    matrix_lr = 0.020
    scalar_lr = 0.020
    muon_momentum = 0.99
    muon_backend_steps = 5
    muon_momentum_warmup_start = 0.92
    muon_momentum_warmup_steps = 1500
    muon_momentum_warmup_frac = 0.179  # > 0: warm up over this first fraction of the budget; 0: over the steps (seed)
    beta1 = 0.9
    beta2 = 0.95
    adam_eps = 1e-8
    grad_clip_norm = 0.0  # 0: off
    muon_weight_decay = 0.04  # decoupled: each Muon matrix shrinks by lr * this per step (the seed: 0)
    muon_row_norm = True  # MuonEq-R: each row of the momentum update at unit norm before Newton-Schulz (seed: 0)
    ema_horizon_frac = 0.067  # > 0: export an EMA of the weights, its horizon this fraction of the budget (the seed: 0)

    # Export.
    quant_bits = 6  # block matrices: 8 = the seed's int8 (quantile clip); 5-7: per-row std clip (SD-clip)
    quant_clip_sigmas = 11.0  # for QUANT_BITS < 8: row clip = this many standard deviations of the row (records: 12.85)
    embed_bits = 8  # the tied embedding (also the output head): 8 = int8 by quantile clip (the seed); 5-7: SD-clip
    embed_clip_sigmas = 14.0  # for EMBED_BITS < 8 (the records' int7 embedding: 14-15)
    compressor = "rans"  # rans: the intN values entropy-coded, the rest lzma (smallest); lzma (xz); zlib (the seed)
    quant_gptq = True  # round the intN rows by GPTQ, with Hessians from training batches (0: to nearest)
    gptq_calib_batches = 4  # of TRAIN_BATCH_TOKENS: 6x the GPTQ paper's 128 x 2048 tokens
    gptq_damp = 0.01  # added to the Hessian's diagonal, times its mean
    gptq_reserve_seconds = 3.0  # of MAX_WALLCLOCK_SECONDS for calibration: 1.5 s (9L), 2.5 s (11L MLP3) on one H200

    # Execution.
    compile = True  # torch.compile the model and Newton-Schulz; switch off for quick CPU runs
    sdpa_backend = "auto"  # CUDA attention kernel: auto (the first that runs of fa3, fa4, cudnn), or flash (the seed's)

    def __init__(self, environ: dict[str, str] | None = None):
        for name, default in self.defaults().items():
            raw = (os.environ if environ is None else environ).get(name.upper())
            setattr(self, name, default if raw is None else parse_env_value(name.upper(), raw, type(default)))

    @classmethod
    def defaults(cls) -> dict[str, object]:
        return {k: v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, (bool, int, float, str))}

    def as_line(self) -> str:
        return "hyperparameters: " + " ".join(f"{k}={getattr(self, k)}" for k in self.defaults())


# -----------------------------------------------------------------------------
# DATA
# Shards are a 256-word int32 header (magic, version, token count) followed by uint16 tokens. Training reads the
# train shards as one endless stream; every micro-step takes one contiguous chunk and hands each rank its own slice,
# so the global batch and the data order are the same on 1, 2, 4 or 8 processes.
# -----------------------------------------------------------------------------
SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_BYTES = 20240520, 1, 256 * 4
GET_DATA_HINT = ("get data with `python3 data/download.py --variant sp8192` (sp1024 for the seed) or build it "
                 "with data/build.py")


def read_shard_header(path: Path) -> int:
    """Validates a shard's header and size; returns its token count."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(SHARD_HEADER_BYTES), dtype="<i4")
    if header.size != 256 or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ConfigError(f"{path} has no valid shard header (magic {SHARD_MAGIC}, version {SHARD_VERSION}); "
                          f"re-download or rebuild it")
    n_tokens = int(header[2])
    expected = SHARD_HEADER_BYTES + 2 * n_tokens
    if n_tokens < 0 or path.stat().st_size != expected:
        raise ConfigError(f"{path} is {path.stat().st_size} bytes but its header promises {expected}; "
                          f"the file is truncated or corrupt: re-download or rebuild it")
    return n_tokens


def load_shard(path: Path, vocab_size: int) -> np.ndarray:
    tokens = np.fromfile(path, dtype="<u2", count=read_shard_header(path), offset=SHARD_HEADER_BYTES)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ConfigError(f"{path} holds token id {int(tokens.max())} >= VOCAB_SIZE={vocab_size}; "
                          f"the shards were made with another tokenizer: set VOCAB_SIZE and TOKENIZER_PATH to match")
    return tokens


def find_shards(data_path: str, need_train: bool = True) -> tuple[list[Path], list[Path]]:
    """Sorted (train, val) shard paths, every header checked; need_train=False (scoring an artifact): no train ones."""
    root = Path(data_path)
    if not root.is_dir():
        raise ConfigError(f"DATA_PATH={data_path} is not a folder; {GET_DATA_HINT}, or set DATA_PATH")
    train = sorted(root.glob("fineweb_train_*.bin")) if need_train else []
    val = sorted(root.glob("fineweb_val_*.bin"))
    if need_train and not train:
        raise ConfigError(f"DATA_PATH={data_path} holds no fineweb_train_*.bin shards; {GET_DATA_HINT}")
    if not val:
        raise ConfigError(f"DATA_PATH={data_path} holds no fineweb_val_*.bin shard; {GET_DATA_HINT}")
    for path in val:
        read_shard_header(path)
    if need_train and sum(read_shard_header(path) for path in train) == 0:
        raise ConfigError(f"the training shards in DATA_PATH={data_path} hold no tokens; {GET_DATA_HINT}")
    return train, val


def load_validation_tokens(val_files: list[Path], seq_len: int, vocab_size: int) -> np.ndarray:
    """All validation shards, whole: non-overlapping windows score the whole sequences in them (the
    seed's truncation), sliding windows every target, the tail after the last whole sequence too."""
    tokens = np.concatenate([load_shard(p, vocab_size) for p in val_files])
    if tokens.size - 1 < seq_len:
        raise ConfigError(f"the validation split has {tokens.size} tokens, fewer than one sequence of "
                          f"TRAIN_SEQ_LEN={seq_len} plus one; lower TRAIN_SEQ_LEN or use a larger split")
    return tokens


class DistributedTokenLoader:
    """A batch takes world_size*(L+1) tokens; rank r keeps span r (its extra token: targets are inputs shifted by 1)."""

    def __init__(self, files: list[Path], vocab_size: int, rank: int, world_size: int, device: torch.device):
        self.files, self.vocab_size = files, vocab_size
        self.rank, self.world_size, self.device = rank, world_size, device
        self.reset()

    def reset(self) -> None:
        self.file_index, self.tokens, self.pos = 0, load_shard(self.files[0], self.vocab_size), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos == self.tokens.size:
                self.file_index = (self.file_index + 1) % len(self.files)
                self.tokens, self.pos = load_shard(self.files[self.file_index], self.vocab_size), 0
            k = min(n, self.tokens.size - self.pos)
            parts.append(self.tokens[self.pos: self.pos + k])
            self.pos, n = self.pos + k, n - k
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[Tensor, Tensor]:
        span = global_tokens // (self.world_size * grad_accum_steps) + 1  # this rank's tokens, and the next one
        chunk = self.take(span * self.world_size)
        local = torch.from_numpy(chunk[self.rank * span: (self.rank + 1) * span].astype(np.int64))
        x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)  # ((span - 1) / seq_len, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# -----------------------------------------------------------------------------
# THE METRIC
# Bits per byte makes scores comparable across tokenizers: the loss in bits is divided by the UTF-8 bytes of the text
# the tokens stand for. Bytes come from the SentencePiece pieces: a leading "▁" is one space byte, except right after
# a boundary token (BOS), where the normalizer never leaves a space.
# -----------------------------------------------------------------------------
@dataclass
class ByteTables:
    base_bytes: Tensor         # int16 [vocab]: UTF-8 bytes of the piece without its "▁"
    has_leading_space: Tensor  # bool [vocab]: the piece starts with "▁"
    is_boundary: Tensor        # bool [vocab]: control/unknown/unused pieces (BOS, EOS, pad, unk)

    def count(self, prev_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Bytes of each target token given the token before it."""
        space = self.has_leading_space[target_ids] & ~self.is_boundary[prev_ids]
        return self.base_bytes[target_ids].to(torch.int16) + space.to(torch.int16)


def build_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int, device: torch.device) -> ByteTables:
    size = max(int(sp.vocab_size()), vocab_size)
    base_bytes = np.zeros(size, dtype=np.int16)
    has_leading_space = np.zeros(size, dtype=np.bool_)
    is_boundary = np.ones(size, dtype=np.bool_)
    for i in range(int(sp.vocab_size())):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):  # byte-fallback piece <0xNN>: one raw byte
            base_bytes[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("▁"):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return ByteTables(*(torch.from_numpy(a).to(device) for a in (base_bytes, has_leading_space, is_boundary)))


def load_tokenizer(path: str, vocab_size: int) -> spm.SentencePieceProcessor:
    if not Path(path).is_file():
        raise ConfigError(f"TOKENIZER_PATH={path} does not exist; {GET_DATA_HINT}, or set TOKENIZER_PATH")
    try:
        sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
        raise ConfigError(f"TOKENIZER_PATH={path} is not a SentencePiece model ({first_line(e)}); "
                          f"point it at a .model file") from None
    if int(sp.vocab_size()) != vocab_size:
        raise ConfigError(f"TOKENIZER_PATH={path} has {sp.vocab_size()} pieces but VOCAB_SIZE={vocab_size}; "
                          f"set VOCAB_SIZE={sp.vocab_size()} or use the matching tokenizer")
    if sp.id_to_piece(sp.piece_to_id("▁")) != "▁":  # else a lone space is 3 byte-fallback pieces, counted as 3 bytes
        raise ConfigError(f"TOKENIZER_PATH={path} has no standalone \"▁\" piece, so its byte counts would be wrong; "
                          f"use a tokenizer trained with one (the challenge's and data/build.py's have it)")
    return sp


# -----------------------------------------------------------------------------
# MODEL
# A GPT with a U-Net of skips (the first half's outputs feed the second half in reverse), a learned mix of each
# block's input with the embedding (resid_mix), QK-norm, RoPE, a learned per-head query gain, grouped KV heads, relu^2
# MLPs, a tied embedding and a tanh logit cap. Linear weights stay fp32 for the optimizer and are cast to bf16 at the
# matmul. Later records' variants are switches, off (the seed's math) unless measured to help.
# -----------------------------------------------------------------------------

# Small per-channel parameters that gate the residual stream: Adam, fp32, kept in fp32 at export.
CONTROL_TENSOR_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight", "smear_gate")
BOS_ID = 1  # starts every document in the shards (data/shards.py): no look-back (SmearGate) may cross it


# CUDA attention kernels, tried in order: FA3 (flash_attn_interface, as on the challenge's image) and FA4 (pip install
# flash-attn-4) where installed, then SDPA through cuDNN or flash (the seed's). One function, KV heads grouped (GQA).
ATTENTION_BACKENDS = ("auto", "fa3", "fa4", "cudnn", "flash")
FLASH_KERNELS: dict[str, object] = {}  # "fa3"/"fa4": causal attention on bf16 (B, T, H, D), once loaded


def is_control_tensor(name: str) -> bool:
    return any(p in name for p in CONTROL_TENSOR_PATTERNS)


class CastedLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def rotary_tables(seq_len: int, rope_dims: int, base: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin of the RoPE angles, computed in float32: shape (1, seq_len, 1, rope_dims/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32, device=device) / rope_dims)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos()[None, :, None], angles.sin()[None, :, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on the first 2 * cos.size(-1) dimensions of each head, half-split; the rest carry no position."""
    rope_dims = 2 * cos.size(-1)
    x1, x2 = x[..., :rope_dims].chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, x[..., rope_dims:]), dim=-1)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """(B, T, H, hd) in and out; k and v may have fewer heads: query head h reads KV head h // (H / KV)."""
    if backend in FLASH_KERNELS:
        return FLASH_KERNELS[backend](q.bfloat16(), k.bfloat16(), v.bfloat16())
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's (B, H, T, hd)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.size(1) != q.size(1)).transpose(1, 2)


def load_flash_kernel(name: str):
    """FA3's or FA4's causal attention, where installed. FA4's kernels are wrapped as two torch ops whose output
    shapes are known ahead, so that torch.compile traces around them (FA4's own autograd.Function it cannot)."""
    if name == "fa3":
        from flash_attn_interface import flash_attn_func  # traceable by torch.compile on the challenge's image
        return lambda q, k, v: (lambda out: out[0] if isinstance(out, tuple) else out)(  # some builds add the lse
            flash_attn_func(q, k, v, causal=True))
    from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd

    @torch.library.custom_op("train_gpt::fa4_forward", mutates_args=())
    def forward(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        out, lse = _flash_attn_fwd(q, k, v, causal=True, return_lse=True)[:2]
        return out, lse

    @torch.library.custom_op("train_gpt::fa4_backward", mutates_args=())
    def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor) -> list[Tensor]:
        return list(_flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3])

    forward.register_fake(lambda q, k, v: (torch.empty_like(q), q.new_empty(q.size(0), q.size(2), q.size(1),
                                                                              dtype=torch.float32)))
    backward.register_fake(lambda dout, q, k, v, *_: [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)])
    forward.register_autograd(lambda ctx, dout, _: tuple(backward(dout.contiguous(), *ctx.saved_tensors)),
                              setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs, *output))
    return lambda q, k, v: forward(q, k, v)[0]


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, qk_gain_init: float, backend: str, xsa: bool):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, dim // num_heads
        self.backend, self.xsa = backend, xsa
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, num_kv_heads * self.head_dim, bias=False)
        self.c_v = CastedLinear(dim, num_kv_heads * self.head_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        B, T, D = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim)  # (B, T, H, hd)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, KV, hd)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim)
        q, k = (apply_rotary(F.rms_norm(t, (self.head_dim,)), *rope) for t in (q, k))
        y = causal_attention(q * self.q_gain.to(q.dtype)[:, None], k, v, self.backend)  # (B, T, H, hd)
        if self.xsa:  # XSA (arXiv 2603.09078): each head's output less its part along its own value's direction
            y, v_dir = y.reshape(B, T, self.num_kv_heads, -1, self.head_dim), F.normalize(v, dim=-1).unsqueeze(3)
            y = y - (y * v_dir).sum(-1, keepdim=True) * v_dir  # head h reads KV head h // group
        return self.proj(y.reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_mult: int, leaky_slope: float):
        super().__init__()
        self.fc = CastedLinear(dim, mlp_mult * dim, bias=False)
        self.proj = CastedLinear(mlp_mult * dim, dim, bias=False)
        self.leaky_slope = leaky_slope  # a small negative slope keeps gradients for negative inputs

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.leaky_relu(self.fc(x), self.leaky_slope).square())


class Block(nn.Module):
    def __init__(self, args: Hyperparameters, layer: int):  # physical index: a repeated block runs alike twice
        super().__init__()
        self.parallel = layer >= args.num_layers - args.parallel_layers  # attention and MLP read the same input
        self.norm_scale = (layer + 1) ** -0.5 if args.ln_scale else 1.0  # deeper blocks start as smaller edits
        dim = args.model_dim
        self.attn = CausalSelfAttention(dim, args.num_heads, args.num_kv_heads, args.qk_gain_init,
                                        backend=args.sdpa_backend, xsa=layer >= args.num_layers - args.xsa_layers)
        self.mlp = MLP(dim, args.mlp_mult, args.mlp_leaky_slope)
        self.attn_scale, self.mlp_scale = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: Tensor, x0: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        normed = self.norm_scale * F.rms_norm(x, (x.size(-1),))
        attn = self.attn_scale.to(x.dtype) * self.attn(normed, rope)
        if self.parallel:
            return x + attn + self.mlp_scale.to(x.dtype) * self.mlp(normed)
        x = x + attn
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self.norm_scale * F.rms_norm(x, (x.size(-1),)))


class GPT(nn.Module):
    def __init__(self, args: Hyperparameters):
        super().__init__()
        dim, layers = args.model_dim, args.num_layers
        self.rope_base, self.logit_softcap = args.rope_base, args.logit_softcap
        self.rope_dims = args.rope_dims or dim // args.num_heads
        self.tok_emb = nn.Embedding(args.vocab_size, dim)
        self.smear_gate = nn.Parameter(torch.zeros(dim)) if args.smear_gate else None  # g = 1/2 at the start
        self.recur_start, self.recur_layers = args.recur_start, args.recur_layers
        self.looped = False  # set by the training loop; compiled graphs are guarded on it (one graph each way)
        # One skip weight per encoder/decoder pair of the deepest (looped) order: the first L // 2 for the
        # unlooped pairs, which keep them when the loop switches on, the rest for the loop's inner pairs.
        self.skip_weights = nn.Parameter(torch.ones((layers + args.recur_layers) // 2, dim))
        self.blocks = nn.ModuleList(Block(args, i) for i in range(layers))
        self.lm_head = None if args.tie_embeddings else CastedLinear(dim, args.vocab_size, bias=False)
        if self.lm_head is None:
            nn.init.normal_(self.tok_emb.weight, std=args.tied_embed_init_std)
        for linear in [b.attn.proj for b in self.blocks] + [b.mlp.proj for b in self.blocks] + [self.lm_head]:
            if linear is not None:
                nn.init.zeros_(linear.weight)  # output projections start at zero so every block begins as the identity

    def block_order(self) -> list[int]:
        """The blocks in the order they run: looped, RECUR_LAYERS blocks from RECUR_START run twice."""
        order = list(range(len(self.blocks)))
        if self.looped and self.recur_layers:
            end = self.recur_start + self.recur_layers
            order = order[:end] + order[self.recur_start:end] + order[end:]
        return order

    def logits(self, input_ids: Tensor) -> Tensor:
        x = F.rms_norm(self.tok_emb(input_ids), (self.tok_emb.embedding_dim,))
        if self.smear_gate is not None:  # SmearGate: x_t <- (1 - g) x_t + g x_{t-1}, g = sigmoid(gate) per channel
            prev = F.pad(x[:, :-1], (0, 0, 1, 0)) * (input_ids != BOS_ID)[..., None].to(x.dtype)  # x_{t-1}; 0 at a BOS
            x = torch.lerp(x, prev, torch.sigmoid(self.smear_gate.to(x.dtype)))
        x0 = x
        rope = rotary_tables(input_ids.size(1), self.rope_dims, self.rope_base, input_ids.device)
        order = self.block_order()
        encoder_layers = len(order) // 2  # the U-Net: the first half's outputs feed the second half
        skips = []
        for j, i in enumerate(order):
            if j >= encoder_layers and skips:
                # Encoder position p's skip takes row L//2-1-p: negative rows (the end) past the unlooped half.
                x = x + self.skip_weights[len(self.blocks) // 2 - len(skips)].to(x.dtype) * skips.pop()
            x = self.blocks[i](x, x0, rope)
            if j < encoder_layers:
                skips.append(x)
        x = F.rms_norm(x, (x.size(-1),))
        logits = F.linear(x, self.tok_emb.weight) if self.lm_head is None else self.lm_head(x)
        return self.logit_softcap * torch.tanh(logits / self.logit_softcap)

    def forward(self, input_ids: Tensor, target_ids: Tensor, reduction: str = "mean") -> Tensor:
        """Mean cross-entropy, or with reduction="none" one loss per target, shaped as targets."""
        logits = self.logits(input_ids)
        losses = F.cross_entropy(logits.float().flatten(0, 1), target_ids.flatten(), reduction=reduction)
        return losses.view_as(target_ids) if reduction == "none" else losses


def build_model(args: Hyperparameters, device: torch.device) -> GPT:
    """Initializes on the CPU under the seed (same weights on every device), then sets the training dtypes: bf16
    embedding, fp32 linear masters (rounded to bf16 once, as the record's whole-model cast does), fp32 controls."""
    torch.manual_seed(args.seed)
    model = GPT(args).bfloat16()
    for module in model.modules():
        if isinstance(module, CastedLinear):
            module.float()
    for name, p in model.named_parameters():
        if p.ndim < 2 or is_control_tensor(name):
            p.data = p.data.float()
    return model.to(device)


# -----------------------------------------------------------------------------
# OPTIMIZERS
# Muon (from modded-nanogpt; https://kellerjordan.github.io/posts/muon/) for the matrices in the blocks: Nesterov
# momentum, then the update is orthogonalized by a quintic Newton-Schulz iteration. Adam for the embedding and the
# small control tensors. The learning rate is flat, then decays linearly to zero over the last WARMDOWN_FRAC of the
# wallclock budget (the seed: the last WARMDOWN_ITERS steps, converted to wallclock time at the average step time).
# -----------------------------------------------------------------------------
def zeropower_via_newtonschulz5(G: Tensor, steps: int, eps: float = 1e-7) -> Tensor:
    """Maps each matrix G = U S V^T of a batch (..., rows, cols) to roughly U V^T. The coefficients trade exactness
    for speed: singular values land in a band around 1 instead of on it, which Muon tolerates."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    wide = G.size(-2) <= G.size(-1)
    if not wide:  # iterate on the wide orientation so X @ X^T is the smaller Gram matrix
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X if wide else X.mT


class Muon(torch.optim.Optimizer):
    """Each rank orthogonalizes every world_size-th matrix, those of one shape in one batched Newton-Schulz call (one
    launch sequence, not one per matrix); an all-reduce of a flat bf16 buffer then gives every rank every update."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, rank: int = 0, world_size: int = 1,
                 orthogonalize=zeropower_via_newtonschulz5, weight_decay: float = 0.0, row_norm: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps,
                                      weight_decay=weight_decay, row_norm=row_norm))
        self.rank, self.world_size, self.orthogonalize = rank, world_size, orthogonalize

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, momentum = group["params"], group["momentum"]
            offsets = np.cumsum([0] + [p.numel() for p in params]).tolist()
            updates = torch.zeros(offsets[-1], device=params[0].device, dtype=torch.bfloat16)
            by_shape: dict[torch.Size, list[tuple[int, Tensor]]] = {}
            for i, p in enumerate(params):
                if i % self.world_size != self.rank or p.grad is None:
                    continue
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = self.state[p]["momentum_buffer"]
                buf.mul_(momentum).add_(p.grad)
                by_shape.setdefault(p.shape, []).append((i, p.grad.add(buf, alpha=momentum)))  # Nesterov
            for shape, items in by_shape.items():
                g = torch.stack([grad for _, grad in items])
                if group["row_norm"]:  # equal-norm rows: no output unit's update dominates the orthogonalization
                    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-7)
                u = self.orthogonalize(g, steps=group["backend_steps"]) * max(1.0, shape[0] / shape[1]) ** 0.5
                for (i, _), u_i in zip(items, u):
                    updates[offsets[i]: offsets[i + 1]] = u_i.flatten()
            if self.world_size > 1:
                dist.all_reduce(updates, op=dist.ReduceOp.SUM)
            for i, p in enumerate(params):
                if group["weight_decay"]:  # decoupled, at the scheduled lr: small weights quantize and compress better
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(updates[offsets[i]: offsets[i + 1]].view_as(p).to(p.dtype), alpha=-group["lr"])


def build_optimizers(model: GPT, args: Hyperparameters, rank: int, world_size: int,
                     orthogonalize=zeropower_via_newtonschulz5) -> tuple[list[torch.optim.Optimizer], Muon]:
    """Routes every parameter to exactly one optimizer; each group remembers its base_lr."""
    block_params = list(model.blocks.named_parameters())
    matrices = [p for n, p in block_params if p.ndim == 2 and not is_control_tensor(n)]
    scalars = [p for n, p in block_params if p.ndim < 2 or is_control_tensor(n)] + [model.skip_weights]
    scalars += [] if model.smear_gate is None else [model.smear_gate]
    head = [] if model.lm_head is None else [model.lm_head.weight]
    routed = matrices + scalars + head + [model.tok_emb.weight]
    assert len(routed) == len(list(model.parameters())) and len({id(p) for p in routed}) == len(routed), \
        "every parameter must belong to exactly one optimizer group"

    def adam(params, lr):
        return torch.optim.Adam([dict(params=params, lr=lr, base_lr=lr)], betas=(args.beta1, args.beta2),
                                eps=args.adam_eps, fused=next(model.parameters()).is_cuda)

    token_lr = args.tied_embed_lr if model.lm_head is None else args.embed_lr
    muon = Muon(matrices, args.matrix_lr, args.muon_momentum, args.muon_backend_steps, rank, world_size, orthogonalize,
                args.muon_weight_decay, args.muon_row_norm)
    muon.param_groups[0]["base_lr"] = args.matrix_lr
    optimizers = [adam([model.tok_emb.weight], token_lr), muon, adam(scalars, args.scalar_lr)]
    if head:
        optimizers.insert(1, adam(head, args.head_lr))
    return optimizers, muon


def budget_used(step: int, elapsed_ms: float, iterations: int, max_wallclock_ms: float | None) -> float:
    """The fraction of the budget spent (wallclock or ITERATIONS): schedules in it keep their shape at any length."""
    return max(elapsed_ms / max_wallclock_ms if max_wallclock_ms else 0.0, step / max(iterations, 1))


def lr_multiplier(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int,
                  max_wallclock_ms: float | None, warmdown_frac: float) -> float:
    """1 until the warmdown, then linear to 0 at the end of the budget. The warmdown: the last warmdown_frac of the
    budget if set, else the last warmdown_iters steps (under a wallclock cap: at the average step time so far)."""
    if warmdown_frac > 0:
        return min(1.0, max(1.0 - budget_used(step, elapsed_ms, iterations, max_wallclock_ms), 0.0) / warmdown_frac)
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_ms is None:
        return min(1.0, max(iterations - step, 0) / warmdown_iters)
    warmdown_ms = warmdown_iters * elapsed_ms / max(step, 1)
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def muon_momentum(step: int, budget_fraction: float, args: Hyperparameters) -> float:
    """Rises linearly from MUON_MOMENTUM_WARMUP_START to MUON_MOMENTUM over the warmup: a budget fraction, or steps."""
    if args.muon_momentum_warmup_frac > 0:
        done = min(budget_fraction / args.muon_momentum_warmup_frac, 1.0)
    else:
        done = min(step / args.muon_momentum_warmup_steps, 1.0) if args.muon_momentum_warmup_steps > 0 else 1.0
    return (1 - done) * args.muon_momentum_warmup_start + done * args.muon_momentum


# -----------------------------------------------------------------------------
# QUANTIZATION AND SERIALIZATION
# The artifact is int8 with one fp16 scale per row for big matrices (rows track output channels), fp16 for small
# tensors, fp32 for control tensors, all torch.save'd and zlib'd (the seed). QUANT_BITS < 8 puts the block matrices
# (EMBED_BITS the embedding) on fewer levels, QUANT_GPTQ=1 picks them by GPTQ; COMPRESSOR=lzma swaps zlib for xz, rans
# also entropy-codes the int8 values. The score comes from the model rebuilt from these bytes, not the trained weights.
# -----------------------------------------------------------------------------
QUANT_FORMAT = "int8_clean_per_row_v1"  # intN is stored and rebuilt as int8 is: one format
KEEP_FLOAT_MAX_NUMEL, INT8_CLIP_QUANTILE = 65_536, 99.99984 / 100
EMBEDDING = "tok_emb.weight"  # exported by EMBED_BITS: the tied embedding is also the output head, the most sensitive
COMPRESSORS = ("zlib", "lzma", "rans")
RANS_LANES, RANS_LANE_VALUES, RANS_BITS = 1024, 8192, 15  # rANS lanes (numpy steps them together); freqs in 2^-15
ARTIFACT_LIMIT_BYTES = 16_000_000  # the challenge's cap on code + compressed model, decimal
XZ_MAGIC = b"\xfd7zXZ\x00"  # how an lzma (.xz) artifact begins; a zlib one begins with 0x78


def export_label(args: Hyperparameters) -> str:
    """What the export does, as the log lines name it: int8+zlib for the seed."""
    return f"int{args.quant_bits}+{args.compressor}"


def quantize_tensor(t: Tensor) -> tuple[Tensor, Tensor]:
    """int8 values and their scale (per row for a matrix, else one); outliers beyond the clip quantile are clamped."""
    t = t.float()
    if t.ndim == 2:
        clip = torch.quantile(t.abs(), INT8_CLIP_QUANTILE, dim=1)
        scale = (clip / 127).clamp_min(1 / 127)
        q = torch.round(torch.maximum(torch.minimum(t, clip[:, None]), -clip[:, None]) / scale[:, None])
        return q.clamp(-127, 127).to(torch.int8), scale.to(torch.float16)
    clip = float(torch.quantile(t.abs().flatten(), INT8_CLIP_QUANTILE)) if t.numel() else 0.0
    scale = torch.tensor(clip / 127 if clip > 0 else 1.0)
    return torch.round(t.clamp(-clip, clip) / scale).clamp(-127, 127).to(torch.int8), scale


def intn_grid(t: Tensor, bits: int, clip_sigmas: float) -> tuple[Tensor, int]:
    """Symmetric intN per row: the rows' fp16 scales and the top level. A row's clip is clip_sigmas standard deviations,
    set by the row's bulk, not its rarest outliers as the int8 quantile is: the few levels go where the weights are."""
    levels = 2 ** (bits - 1) - 1
    scale = (clip_sigmas * t.float().std(dim=1, correction=0) / levels).half()
    return scale.masked_fill(scale == 0, 1.0), levels  # an all-zero row: any scale, every q is 0


def quantize_rows_nearest(t: Tensor, bits: int, clip_sigmas: float) -> tuple[Tensor, Tensor]:
    scale, levels = intn_grid(t, bits, clip_sigmas)
    # Rounded against the stored fp16 scale: a rebuilt row is within half a step of the clipped one (the clamp clips).
    return torch.round(t.float() / scale.float()[:, None]).clamp(-levels, levels).to(torch.int8), scale


def quantize_rows_gptq(t: Tensor, hessian: Tensor, bits: int, clip_sigmas: float, damp: float) -> tuple[Tensor, Tensor]:
    """intn_grid's rows rounded by GPTQ (Frantar et al. 2022): column by column, by falling diag H
    (act-order), each rounding error moves onto the columns not yet rounded, through the inverse of
    H = sum of x x^T of the layer's inputs, so that the layer's output, not each weight, stays close."""
    scale, levels = intn_grid(t, bits, clip_sigmas)
    s, order = scale.float(), hessian.diagonal().argsort(descending=True)
    w, h = t.float()[:, order], hessian.double()[order][:, order]
    # An input unseen in calibration is alone in H: it rounds to nearest (the paper zeroes it; validation may use it).
    h.diagonal()[h.diagonal() == 0] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q = torch.empty_like(w)
    tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False  # full fp32, any caller
    for start in range(0, w.size(1), 128):  # lazy batches: columns past the block get one update per block
        end = min(start + 128, w.size(1))
        err = torch.empty_like(w[:, start:end])
        for j in range(start, end):
            q[:, j] = torch.round(w[:, j] / s).clamp(-levels, levels)
            err[:, j - start] = (w[:, j] - q[:, j] * s) / u[j, j]
            w[:, j + 1:end] -= err[:, j - start, None] * u[j, j + 1:end]
        w[:, end:] -= err @ u[start:end, end:]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return q[:, order.argsort()].to(torch.int8), scale


def quantize_state_dict(state: dict[str, Tensor], bits: int, clip_sigmas: float, hessians: dict | None,
                        damp: float, embed: tuple[int, float] = (8, 0.0)) -> tuple[dict, dict]:
    """intN matrices that have a Hessian (by name) are rounded by GPTQ; embed: the embedding's (bits, clip_sigmas)."""
    obj = dict(__quant_format__=QUANT_FORMAT, quantized={}, scales={}, dtypes={}, passthrough={},
               qmeta={}, passthrough_orig_dtypes={})
    if bits < 8:  # said once for the whole artifact, even if no matrix is big enough to use it
        obj["bits"] = bits
    stats = dict(tensor_bytes=0, payload_bytes=0)
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        stats["tensor_bytes"] += t.numel() * t.element_size()
        if not t.is_floating_point() or t.numel() <= KEEP_FLOAT_MAX_NUMEL:
            if t.is_floating_point() and is_control_tensor(name):
                t = t.float()
            elif t.dtype in (torch.float32, torch.bfloat16):
                obj["passthrough_orig_dtypes"][name] = str(t.dtype).removeprefix("torch.")
                t = t.half()
            obj["passthrough"][name] = t
            stats["payload_bytes"] += t.numel() * t.element_size()
            continue
        row_bits, sigmas = embed if name == EMBEDDING else (bits, clip_sigmas)
        if row_bits < 8 and t.ndim == 2:
            hessian = (hessians or {}).get(name)
            q, scale = quantize_rows_nearest(t, row_bits, sigmas) if hessian is None else (  # on H's device: the GPU
                x.cpu() for x in quantize_rows_gptq(t.to(hessian.device), hessian, row_bits, sigmas, damp))
            obj["qmeta"][name] = dict(scheme="per_row", axis=0, bits=row_bits)
        else:
            q, scale = quantize_tensor(t)
            if scale.ndim:
                obj["qmeta"][name] = dict(scheme="per_row", axis=0)  # no bits: 8
        obj["quantized"][name], obj["scales"][name] = q, scale
        obj["dtypes"][name] = str(t.dtype).removeprefix("torch.")
        stats["payload_bytes"] += q.numel() + scale.numel() * scale.element_size()
    return obj, stats


def dequantize_state_dict(obj: dict) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or obj.get("__quant_format__") != QUANT_FORMAT:
        raise ConfigError(f"the artifact is not in the {QUANT_FORMAT} format this script writes")
    out = {}
    for name, q in (rans_decode(obj["rans"]) if "rans" in obj else obj["quantized"]).items():
        scale = obj["scales"][name].float()
        scale = scale.view(-1, *[1] * (q.ndim - 1)) if scale.ndim else scale
        out[name] = (q.float() * scale).to(getattr(torch, obj["dtypes"][name]))
    for name, t in obj["passthrough"].items():
        orig = obj.get("passthrough_orig_dtypes", {}).get(name)
        out[name] = t.to(getattr(torch, orig)) if orig else t
    return out


def collect_hessians(model: GPT, loader: DistributedTokenLoader, args: Hyperparameters,
                     grad_accum_steps: int) -> dict[str, Tensor]:
    """GPTQ's H = sum of x x^T of each CastedLinear's inputs (by weight name) over GPTQ_CALIB_BATCHES batches."""
    hessians: dict[str, Tensor] = {}

    def accumulate(name: str, x: Tensor) -> None:
        x = x.detach().flatten(0, -2).float()
        with torch.autocast(x.device.type, enabled=False):  # summed in fp32, not in the forward's bf16
            hessians[name] = hessians.get(name, 0) + x.T @ x

    hooks = [m.register_forward_pre_hook(lambda _, inputs, name=f"{n}.weight": accumulate(name, inputs[0]))
             for n, m in model.named_modules() if isinstance(m, CastedLinear)]
    with torch.no_grad():
        for _ in range(args.gptq_calib_batches * grad_accum_steps):
            x, _ = loader.next_batch(args.train_batch_tokens, args.train_seq_len, grad_accum_steps)
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                model.logits(x)
    for hook in hooks:
        hook.remove()
    for h in hessians.values() if dist.is_initialized() else ():
        dist.all_reduce(h, op=dist.ReduceOp.SUM)
    return hessians


def rans_frame(freq: np.ndarray, sizes: list[int], lanes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lane k % lanes codes symbol k at step k // lanes by its tensor's table; an extra table's free symbol fills the
    last step. Returns each step's tables, and every table's frequencies and cumulative frequencies below a symbol."""
    freq = np.vstack([freq, np.eye(1, 256, dtype=np.int64) << RANS_BITS])  # the free symbol: probability 1
    table = np.repeat(np.arange(len(sizes)), sizes)
    table = np.append(table, np.full(-table.size % lanes, len(freq) - 1)).reshape(-1, lanes)
    return table, freq, freq.cumsum(1) - freq


def rans_encode(quantized: dict[str, Tensor]) -> dict:
    """The intN tensors as one stream entropy-coded by rANS (Duda 2013), each with its own symbol frequencies:
    about 0.1% over their order-0 entropy, where lzma spends 2-8% more on values this close to independent."""
    symbols = [q.numpy().ravel().astype(np.int64) + 128 for q in quantized.values()]
    counts = np.array([np.bincount(s, minlength=256) for s in symbols], dtype=np.int64).reshape(-1, 256)
    present = counts > 0  # of 2^RANS_BITS: a unit per symbol present, the rest by count, the remainder to the largest
    freq = counts * ((1 << RANS_BITS) - present.sum(1, keepdims=True)) // counts.sum(1, keepdims=True).clip(1) + present
    freq[np.arange(len(freq)), freq.argmax(1)] += (1 << RANS_BITS) - freq.sum(1)
    sizes = [s.size for s in symbols]  # each lane ends in 4 bytes of state: one per RANS_LANE_VALUES values
    table, freq_all, cum = rans_frame(freq, sizes, min(RANS_LANES, max(1, sum(sizes) // RANS_LANE_VALUES)))
    sym = np.concatenate([*symbols, np.zeros(table.size - sum(sizes), np.int64)]).reshape(table.shape)  # 0: the fill
    x, words = np.full(table.shape[1], 1 << 16), []
    for t in reversed(range(len(table))):  # the decoder takes symbols back in reverse order
        f, c = freq_all[table[t], sym[t]], cum[table[t], sym[t]]
        emit = x >= f << (32 - RANS_BITS)  # x in [2^16, 2^32): shed its low 16 bits first if coding would pass 2^32
        words.append(x[emit] & 0xFFFF)
        x = np.where(emit, x >> 16, x)
        x = (x // f << RANS_BITS) + x % f + c
    words = np.concatenate([np.zeros(0, np.int64), *words[::-1]]).astype(np.uint16).view(np.int16)
    return dict(names=list(quantized), shapes=[list(q.shape) for q in quantized.values()], freq=torch.from_numpy(freq),
                states=torch.from_numpy(x.astype(np.uint32).view(np.int32)), words=torch.from_numpy(words))


def rans_decode(coded: dict) -> dict[str, Tensor]:
    sizes = [math.prod(shape) for shape in coded["shapes"]]
    table, freq, cum = rans_frame(coded["freq"].numpy(), sizes, coded["states"].numel())  # lanes as written
    symbol_at = np.stack([np.repeat(np.arange(256), f) for f in freq])  # each table's symbol of each slot
    x, at, out = coded["states"].numpy().view(np.uint32).astype(np.int64), 0, np.empty(table.shape, np.int64)
    words = coded["words"].numpy().view(np.uint16).astype(np.int64)
    for t in range(len(table)):
        slot = x & ((1 << RANS_BITS) - 1)
        s = out[t] = symbol_at[table[t], slot]
        x = freq[table[t], s] * (x >> RANS_BITS) + slot - cum[table[t], s]
        refill = x < 1 << 16  # exactly the lanes that shed 16 bits at this step when encoding
        x[refill] = x[refill] << 16 | words[at: at + refill.sum()]
        at += refill.sum()
    if at != words.size or (x != 1 << 16).any():  # every lane back at its start, every word read: else not our stream
        raise ValueError("the rANS stream does not decode to its end")
    values = np.split(out.ravel()[:sum(sizes)] - 128, np.cumsum(sizes)[:-1].astype(np.int64))
    return {name: torch.from_numpy(v.astype(np.int8)).view(shape)
            for name, v, shape in zip(coded["names"], values, coded["shapes"])}


def serialize_artifact(obj: dict, compressor: str) -> tuple[bytes, int]:
    """Returns (compressed bytes, length of the torch.save stream that lzma/zlib compress). rans: the int8 values
    entropy-coded first (so that stream is nearly the artifact's size), the rest through lzma."""
    if compressor == "rans":
        obj = dict(obj, quantized={}, rans=rans_encode(obj["quantized"]))
    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    return (zlib.compress(raw, level=9) if compressor == "zlib" else lzma.compress(raw, preset=9)), len(raw)


def load_artifact(path: str) -> tuple[dict[str, Tensor], int, str]:
    """The rebuilt weights, and the bits and compressor it was made with: scoring one needs no export settings."""
    try:
        blob = Path(path).read_bytes()
        compressor = "lzma" if blob.startswith(XZ_MAGIC) else "zlib"
        obj = torch.load(io.BytesIO(lzma.decompress(blob) if compressor == "lzma" else zlib.decompress(blob)),
                         map_location="cpu")
        state = dequantize_state_dict(obj)
    except Exception as e:  # unreadable, not zlib or xz, not a torch file or not ours, a broken stream: one advice
        raise ConfigError(f"cannot read artifact {path} ({first_line(e)}); "
                          f"point EVAL_ARTIFACT at a .ptz a run wrote") from None
    return state, obj.get("bits", 8), "rans" if "rans" in obj else compressor


def load_weights(model: GPT, state: dict[str, Tensor], source: str) -> None:
    expected = model.state_dict()
    for name, t in state.items():
        if name in expected and expected[name].shape != t.shape:
            raise ConfigError(f"{source}: {name} has shape {list(t.shape)} but the model built from the environment "
                              f"has {list(expected[name].shape)}; use the shape settings of the run that made it")
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise ConfigError(f"{source} does not match the model (missing {sorted(missing)[:3]}, unexpected "
                          f"{sorted(unexpected)[:3]}); use the settings of the run that made it")
    model.load_state_dict(state, strict=True)
    model.looped = model.recur_layers > 0  # finished weights run as they trained last (RECUR_FROM_FRAC < 1)


# -----------------------------------------------------------------------------
# EVALUATION
# Windows of TRAIN_SEQ_LEN tokens, a contiguous range of them per rank; per-token losses and bytes summed in float64
# over ranks before dividing. Validation during training: non-overlapping windows (the seed's). The final score, with
# EVAL_STRIDE=s: a window every s tokens, each after the first scoring only its last s targets (every target once, with
# at least TRAIN_SEQ_LEN - s tokens of context; the last window ends at the split's end and scores what is left).
# With TTT_EPOCHS > 0 it trains score-first (the challenge's rule): windows go in chunks of TTT_CHUNK_TOKENS targets by
# their first scored target; once a chunk is scored, the model trains on its targets, all scored by then.
# -----------------------------------------------------------------------------
@dataclass
class Validation:
    """What scoring needs besides the model: the split, the metric's tables, TRAIN_SEQ_LEN, windows per batch."""
    tokens: np.ndarray
    tables: ByteTables
    seq_len: int
    batch_seqs: int


def sliding_stride(stride: int, seq_len: int) -> int:
    """The stride windows really slide by: 0 (no overlap) unless 0 < stride < seq_len."""
    return stride if 0 < stride < seq_len else 0


def window_ends(n_targets: int, seq_len: int, stride: int) -> list[int]:
    """End (exclusive, in target positions) of every window; window k scores the targets from
    the previous window's end up to its own."""
    if not sliding_stride(stride, seq_len):
        return list(range(seq_len, n_targets + 1, seq_len))
    return list(range(seq_len, n_targets, stride)) + [n_targets]


def first_target(ends: list[int], k: int, seq_len: int) -> int:
    """The first target window k scores: its own first, unless an earlier window scored it."""
    return max(ends[k - 1] if k else 0, ends[k] - seq_len)


class ScoreFirstTTT:
    """Test-time training as the challenge allows it: SGD, momentum 0.9, on targets already scored."""

    def __init__(self, params, epochs: int, lr: float, chunk_tokens: int):
        self.epochs, self.lr, self.chunk_tokens = epochs, lr, chunk_tokens
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
        self.chunks = self.train_seqs = 0  # for the log

    def chunk_bounds(self, ends: list[int], seq_len: int) -> list[int]:
        """Chunk c's windows are bounds[c] up to bounds[c + 1]."""
        chunk_of = [first_target(ends, k, seq_len) // self.chunk_tokens for k in range(len(ends))]
        self.chunks = chunk_of[-1] + 1
        return np.searchsorted(chunk_of, np.arange(self.chunks + 1)).tolist()

    def train_on(self, run: Run, model: nn.Module, val: Validation, chunk: int) -> None:
        """EPOCHS steps on the chunk, each rank on an equal share (DDP averages), lr cosine-decaying over chunks."""
        n = self.chunk_tokens // run.world_size  # this rank's targets
        first = chunk * self.chunk_tokens + run.rank * n
        span = torch.from_numpy(val.tokens[first: first + n + 1].astype(np.int64)).to(run.device)
        self.optimizer.param_groups[0]["lr"] = self.lr * (1 + math.cos(math.pi * chunk / (self.chunks - 1))) / 2
        for _ in range(self.epochs):
            with run.autocast():
                loss = model(span[:-1].view(-1, val.seq_len), span[1:].view(-1, val.seq_len))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], 1.0)
            self.optimizer.step()
            model.zero_grad(set_to_none=True)  # the parameters it does not train too
        self.train_seqs += self.chunk_tokens // val.seq_len


def score_windows(run: Run, model: nn.Module, val: Validation, windows: list[tuple[int, int]]) -> Tensor:
    """Returns float64 [loss_sum_nats, tokens, bytes] over the windows, each given as (its end, the
    first target it scores)."""
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(windows), val.batch_seqs):
            batch = windows[b: b + val.batch_seqs]
            # A short last batch is filled up with copies of its first window that score nothing: every
            # batch has one shape, so the compiled model needs one graph for all of validation.
            batch += [(batch[0][0], batch[0][0])] * (val.batch_seqs - len(batch))  # (end, end): no target
            rows = np.stack([val.tokens[end - val.seq_len: end + 1] for end, _ in batch])  # (B, seq_len + 1)
            chunk = torch.from_numpy(rows.astype(np.int64)).to(run.device)
            x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            skip = torch.tensor([first - (end - val.seq_len) for end, first in batch], device=run.device)
            with run.autocast():
                losses = model(x, y, reduction="none").detach()
            scored = torch.arange(val.seq_len, device=run.device)[None, :] >= skip[:, None]
            sums += torch.stack([(losses.double() * scored).sum(), scored.sum().double(),
                                 (val.tables.count(x, y).double() * scored).sum()])
    model.train()
    return sums


def validation_sums(run: Run, model: nn.Module, val: Validation, stride: int, ttt: ScoreFirstTTT | None) -> Tensor:
    """Returns float64 [loss_sum_nats, tokens, bytes] over this rank's share of the windows (with
    ttt: of each chunk's; the model trains on every chunk but the last once it is scored)."""
    ends = window_ends(val.tokens.size - 1, val.seq_len, stride)
    bounds = ttt.chunk_bounds(ends, val.seq_len) if ttt else [0, len(ends)]
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    for c in range(len(bounds) - 1):
        first, n = bounds[c], bounds[c + 1] - bounds[c]
        mine = range(first + n * run.rank // run.world_size, first + n * (run.rank + 1) // run.world_size)
        sums += score_windows(run, model, val, [(ends[k], first_target(ends, k, val.seq_len)) for k in mine])
        if c < len(bounds) - 2:
            ttt.train_on(run, model, val, c)
    return sums


def eval_val(run: Run, model: nn.Module, val: Validation, stride: int,
             ttt: ScoreFirstTTT | None = None) -> tuple[float, float]:
    """Returns (val_loss in nats per token, val_bpb) over the whole validation split."""
    sums = validation_sums(run, model, val, stride, ttt)
    if run.world_size > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    loss_sum, tokens, n_bytes = sums.tolist()
    val_loss = loss_sum / tokens
    return val_loss, val_loss / math.log(2) * tokens / n_bytes


# -----------------------------------------------------------------------------
# RUN SETUP
# What every entry point (training, tools/benchmark.py, tools/requantize.py) does first: process layout, settings
# checked against it, device, attention kernel, process group. A step is MICRO_BATCHES micro-batches over all
# processes: the same global batch and data order on any number of GPUs.
# -----------------------------------------------------------------------------
MICRO_BATCHES = 8


@dataclass
class Run:
    """Where this process sits in the run, and what every phase needs from that."""
    args: Hyperparameters
    rank: int
    world_size: int
    grad_accum_steps: int  # this process's share of the MICRO_BATCHES
    distributed: bool  # launched by torchrun, even with one process
    device: torch.device
    sdpa_fallback: str = ""  # why the attention kernel is not the one asked for, if it is not
    log_path: Path | None = None  # rank 0's logs/<RUN_ID>.txt, once the run has claimed its RUN_ID

    def log(self, msg: str, console: bool = True) -> None:
        """Rank 0 prints and appends to its log file; other ranks stay quiet."""
        if self.log_path and console:
            print(msg, flush=True)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as f:
                print(msg, file=f)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def timed(self, work):
        """work()'s result and its time in ms, the device's queued work included."""
        self.sync()
        t0 = time.perf_counter()
        result = work()
        self.sync()
        return result, 1000.0 * (time.perf_counter() - t0)


def require(args: Hyperparameters, name: str, holds: bool, rule: str, fix: str) -> None:
    """One setting's rule; its error says what to set instead."""
    if not holds:
        raise ConfigError(f"{name.upper()}={getattr(args, name)} must be {rule}: set {name.upper()} to {fix} "
                          f"(default {Hyperparameters.defaults()[name]})")


def check_settings(args: Hyperparameters, world_size: int, grad_accum_steps: int) -> None:
    """Every setting's rule, before any work: the first one broken stops the run with its fix."""
    plain = all(c.isascii() and (c.isalnum() or c in "._-") for c in args.run_id)  # not a path
    if not plain or args.run_id.startswith(".") or len(args.run_id) > 100:
        raise ConfigError(f"RUN_ID={args.run_id!r} is not a plain file name: set RUN_ID to at most 100 letters, "
                          f"digits, '.', '_' or '-', not starting with '.' (or unset it for a fresh one)")
    for name in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "train_seq_len",
                 "embed_lr", "head_lr", "tied_embed_lr", "matrix_lr", "scalar_lr", "ttt_lr"):
        require(args, name, getattr(args, name) > 0, "> 0", "a positive number")
    require(args, "seed", 0 <= args.seed < 2**32, "between 0 and 2**32-1", "an integer in that range")
    require(args, "iterations", args.iterations >= 0, "0 or more", "a step count")
    require(args, "sdpa_backend", args.sdpa_backend in ATTENTION_BACKENDS, "/".join(ATTENTION_BACKENDS), "auto")
    if args.recur_layers < 0 or args.recur_layers and not (0 <= args.recur_start <= args.num_layers - args.recur_layers
                                                           and 0 <= args.recur_from_frac < 1):
        raise ConfigError(f"RECUR_LAYERS={args.recur_layers} from RECUR_START={args.recur_start} must lie within "
                          f"NUM_LAYERS={args.num_layers}, and RECUR_FROM_FRAC={args.recur_from_frac} in [0, 1) "
                          f"(or RECUR_LAYERS=0: no recurrence)")
    for name in ("parallel_layers", "xsa_layers"):  # NUM_LAYERS or more: every block
        require(args, name, getattr(args, name) >= 0, "0 or more", "a count of blocks (0: off)")
    if args.model_dim % args.num_heads or (args.model_dim // args.num_heads) % 2 or args.num_heads % args.num_kv_heads:
        raise ConfigError(f"MODEL_DIM={args.model_dim}, NUM_HEADS={args.num_heads}, NUM_KV_HEADS={args.num_kv_heads}: "
                          f"heads must split MODEL_DIM into even head sizes, and KV heads must divide heads")
    require(args, "rope_dims", args.rope_dims % 2 == 0 and 0 <= args.rope_dims <= args.model_dim // args.num_heads,
            "0 (all) or an even number up to MODEL_DIM/NUM_HEADS", "an even number such as 16 of 64")
    for name in ("warmdown_frac", "muon_momentum_warmup_frac", "ema_horizon_frac"):
        require(args, name, 0 <= getattr(args, name) <= 1, "a fraction of the budget in [0, 1]", "a number in [0, 1]")
    require(args, "eval_stride", args.eval_stride >= 0, "0 or more", "0 (no sliding windows) or a stride")
    require(args, "ttt_epochs", args.ttt_epochs >= 0, "0 or more", "0 (no test-time training) or a count")
    per_chunk = world_size * args.train_seq_len  # every rank trains on as many whole sequences
    chunks_split = args.ttt_chunk_tokens > 0 and args.ttt_chunk_tokens % per_chunk == 0
    require(args, "ttt_chunk_tokens", chunks_split or not args.ttt_epochs,
            f"a positive multiple of WORLD_SIZE*TRAIN_SEQ_LEN = {per_chunk}",
            f"a multiple of {per_chunk}, or TTT_EPOCHS=0 (no test-time training)")
    per_micro_step = world_size * grad_accum_steps * args.train_seq_len  # one sequence per rank and micro-step
    require(args, "train_batch_tokens", args.train_batch_tokens > 0 and args.train_batch_tokens % per_micro_step == 0,
            f"whole sequences: a multiple of WORLD_SIZE*grad_accum*TRAIN_SEQ_LEN = {world_size}*{grad_accum_steps}*"
            f"{args.train_seq_len} = {per_micro_step}", "a positive multiple of that")
    require(args, "val_batch_size", args.val_batch_size >= per_micro_step, "at least one sequence per rank",
            f"{per_micro_step} or more")
    if args.eval_artifact:  # the artifact says how it was exported
        return
    for bits, sigmas in (("quant_bits", "quant_clip_sigmas"), ("embed_bits", "embed_clip_sigmas")):
        require(args, bits, 5 <= getattr(args, bits) <= 8, "in 5..8", "a number in that range (8: the seed's int8)")
        require(args, sigmas, getattr(args, sigmas) > 0, "> 0", "a positive number of std deviations")
    require(args, "compressor", args.compressor in COMPRESSORS, "one of " + "/".join(COMPRESSORS), "one of them")
    cap = args.max_wallclock_seconds if args.max_wallclock_seconds > 0 else math.inf
    for bad, fix in ((args.quant_bits == 8, f"QUANT_BITS < 8 (not {args.quant_bits})"),
                     (args.gptq_calib_batches < 1, f"GPTQ_CALIB_BATCHES >= 1 (not {args.gptq_calib_batches})"),
                     (not args.gptq_damp > 0, f"GPTQ_DAMP > 0 (not {args.gptq_damp})"),
                     (not 0 <= args.gptq_reserve_seconds < cap, f"0 <= GPTQ_RESERVE_SECONDS < MAX_WALLCLOCK_SECONDS "
                                                               f"(not {args.gptq_reserve_seconds})")):
        if args.quant_gptq and bad:
            raise ConfigError(f"QUANT_GPTQ=1 needs {fix}")


def process_layout(environ) -> tuple[bool, int, int, int]:
    """(launched by torchrun, RANK, WORLD_SIZE, LOCAL_RANK), checked: a launcher sets all three."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if ("RANK" in environ) != ("WORLD_SIZE" in environ):
        given, missing = ("RANK", "WORLD_SIZE") if "RANK" in environ else ("WORLD_SIZE", "RANK")
        raise ConfigError(f"{given} is set but {missing} is not; launch with torchrun, or unset both for one process")
    rank, world_size, local_rank = (parse_env_value(n, environ.get(n, d), int) for n, d in zip(names, "010"))
    if world_size <= 0 or MICRO_BATCHES % world_size:
        raise ConfigError(f"WORLD_SIZE={world_size} must divide {MICRO_BATCHES} (use --nproc_per_node 1, 2, 4 or 8)")
    if not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"RANK={rank} and LOCAL_RANK={local_rank} must lie in [0, WORLD_SIZE={world_size})")
    return "RANK" in environ and "WORLD_SIZE" in environ, rank, world_size, local_rank


def attention_agrees(device: torch.device, backend: str, args: Hyperparameters) -> bool:
    """Causal attention forward and backward at this run's shapes through backend and through flash SDPA on the same
    random data, compiled as the model is: True if backend runs (and traces), stays finite, matches up to bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    gen, head_dim, results = torch.Generator(device=device).manual_seed(0), args.model_dim // args.num_heads, []
    q, k, v = (torch.randn(1, args.train_seq_len, h, head_dim, device=device, dtype=torch.bfloat16, generator=gen)
               for h in (args.num_heads, args.num_kv_heads, args.num_kv_heads))
    attend = torch.compile(causal_attention, fullgraph=True) if args.compile else causal_attention
    for name in (backend, "flash"):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION if name == "cudnn" else SDPBackend.FLASH_ATTENTION):
            out = attend(*inputs, name)
        out.float().square().sum().backward()
        results.append([out.detach().float()] + [t.grad.float() for t in inputs])
    # bf16 outputs of two correct kernels differ by well under 1%; a broken kernel by far more.
    return all(bool(a.isfinite().all()) and float((a - b).norm()) <= 0.05 * float(b.norm()) for a, b in zip(*results))


def select_attention(args: Hyperparameters, device: torch.device) -> tuple[str, str]:
    """The first kernel from SDPA_BACKEND on in ATTENTION_BACKENDS (auto: from FA3 on) that runs here and agrees with
    flash SDPA at this run's shapes (SDPA then runs it alone); its name, and why earlier ones were passed over."""
    if device.type != "cuda":  # SDPA's CPU kernels, whatever the name
        return (args.sdpa_backend if args.sdpa_backend in ("cudnn", "flash") else "flash"), ""
    passed_over = []
    for name in ATTENTION_BACKENDS[max(ATTENTION_BACKENDS.index(args.sdpa_backend), 1):]:
        try:
            if name in ("fa3", "fa4") and name not in FLASH_KERNELS:
                FLASH_KERNELS[name] = load_flash_kernel(name)
            if name == "flash" or attention_agrees(device, name, args):
                break
            passed_over.append(f"{name} disagrees with flash")
        except Exception as e:  # not installed, not built for this GPU, ...: the next one
            passed_over.append(f"{name} cannot run here: {first_line(e)}")
    torch.backends.cuda.enable_flash_sdp(name != "cudnn")  # for FA3/FA4 the model calls no SDPA; flash stays on
    torch.backends.cuda.enable_cudnn_sdp(name == "cudnn")
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_math_sdp(False)
    return name, "; ".join(passed_over)


def setup_run(args: Hyperparameters, environ) -> Run:
    """The process layout (torchrun's environ, or {} for one process) and the settings, checked before any GPU work."""
    distributed, rank, world_size, local_rank = process_layout(environ)
    grad_accum_steps = MICRO_BATCHES // world_size
    check_settings(args, world_size, grad_accum_steps)
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.sdpa_backend, fallback = select_attention(args, device)
    if distributed:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return Run(args, rank, world_size, grad_accum_steps, distributed, device, sdpa_fallback=fallback)


def run_paths(run_id: str, quant_bits: int) -> dict[str, Path]:
    model = f"artifacts/{run_id}_model"  # the log last: claim_run_paths's order
    return dict(raw=Path(f"{model}.pt"), artifact=Path(f"{model}.int{quant_bits}.ptz"), log=Path(f"logs/{run_id}.txt"))


def claim_run_paths(run_id: str, writes_model: bool, quant_bits: int) -> None:
    """Checks that this run can write its files and none is an earlier run's, by real writes (root ignores mode bits,
    not a read-only disk): the model's first, so a refused run leaves no log; then the log, kept to claim the RUN_ID."""
    paths = run_paths(run_id, quant_bits)
    wanted = list(paths.values()) if writes_model else [paths["log"]]
    for path in wanted:
        if path.exists():
            raise ConfigError(f"{path} already exists: RUN_ID={run_id} was used before; pick another RUN_ID "
                              f"(or leave it unset for a fresh one)")
    for path in wanted:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(exist_ok=False)
        except OSError as e:
            raise ConfigError(f"cannot write {path} ({e.strerror}); make {path.parent}/ a writable folder, or run "
                              f"from a writable folder") from None
        if path != paths["log"]:
            path.unlink()


def describe_environment(device: torch.device, world_size: int) -> tuple[str, str]:
    """The log's file-only header (versions, nvidia-smi) and a one-line hardware summary."""
    lines = [f"Running Python {sys.version}", f"Running PyTorch {torch.__version__}"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":  # through the shell: a missing nvidia-smi is a line of the log, not an exception
        lines.append(subprocess.run("nvidia-smi 2>&1", shell=True, capture_output=True, text=True).stdout)
    return "\n".join(lines), f"hardware:{name.replace(' ', '_')} count:{world_size}"


# -----------------------------------------------------------------------------
# TRAINING
# The clock counts only training: the compile warmup runs before it starts and validation pauses it.
# -----------------------------------------------------------------------------
@dataclass
class Training:
    """The model, the module that trains it (compiled and DDP-wrapped as the run says) and its optimizers."""
    base_model: GPT
    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    muon: Muon


def build_training(run: Run) -> Training:
    args, device = run.args, run.device
    base_model = build_model(args, device)
    compiled = torch.compile(base_model, dynamic=False, fullgraph=True) if args.compile else base_model
    model = DDP(compiled, device_ids=[device.index] if device.type == "cuda" else None) if run.distributed else compiled
    orthogonalize = torch.compile(zeropower_via_newtonschulz5) if args.compile else zeropower_via_newtonschulz5
    return Training(base_model, model, *build_optimizers(base_model, args, run.rank, run.world_size, orthogonalize))


def forward_backward(run: Run, model: nn.Module, loader: DistributedTokenLoader) -> Tensor:
    """One step's gradients, each micro-batch's loss scaled by 1/grad_accum_steps (DDP syncs on the last): mean loss."""
    total = torch.zeros((), device=run.device)
    for micro_step in range(run.grad_accum_steps):
        if run.distributed:
            model.require_backward_grad_sync = micro_step == run.grad_accum_steps - 1
        x, y = loader.next_batch(run.args.train_batch_tokens, run.args.train_seq_len, run.grad_accum_steps)
        with run.autocast():
            loss = model(x, y)
        (loss / run.grad_accum_steps).backward()
        total += loss.detach()
    return total / run.grad_accum_steps


def optimizer_step(run: Run, training: Training, lr_scale: float) -> None:
    for opt in training.optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_scale
    if run.args.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(training.base_model.parameters(), run.args.grad_clip_norm)
    for opt in training.optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)


def warmup_and_reset(run: Run, training: Training, loader: DistributedTokenLoader) -> None:
    """WARMUP_STEPS real steps to compile every kernel, then back to the initial weights, optimizer states and data."""
    base_model, optimizers = training.base_model, training.optimizers
    weights = {k: v.detach().cpu().clone() for k, v in base_model.state_dict().items()}
    states = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
    n = run.args.warmup_steps
    for step in range(1, n + 1):
        base_model.looped = run.args.recur_layers > 0 and step > n // 2  # the second half compiles the looped graph
        forward_backward(run, training.model, loader)
        optimizer_step(run, training, 1.0)
        if n <= 20 or step % 10 == 0 or step == n:
            run.log(f"warmup_step:{step}/{n}")
    base_model.load_state_dict(weights, strict=True)
    base_model.looped = False
    for opt, state in zip(optimizers, states):
        opt.load_state_dict(state)
    loader.reset()


def loop_budget_ms(args: Hyperparameters) -> float | None:
    """The loop's cap (its schedules end there), less GPTQ's reserve: calibration reads training data, so it counts."""
    if args.max_wallclock_seconds <= 0:
        return None
    return 1000.0 * (args.max_wallclock_seconds - (args.gptq_reserve_seconds if args.quant_gptq else 0.0))


def train(run: Run, training: Training, loader: DistributedTokenLoader, val: Validation,
          clock=time.perf_counter) -> float:
    """Returns the training time in ms, by clock (seconds; tests pass their own)."""
    args, log, base_model, max_wallclock_ms = run.args, run.log, training.base_model, loop_budget_ms(run.args)
    training_time_ms, stop_after_step, step, averaged_frac = 0.0, None, 0, 0.0
    # EMA_HORIZON_FRAC: an fp32 moving average of the weights whose horizon (1/(1 - decay) steps) is that fraction of
    # the budget (a capped run's step count is unknown): a step that spends d of it keeps exp(-d / EMA_HORIZON_FRAC).
    live = base_model.state_dict()  # views of the parameters, which train in place: built once, not every step
    average = {k: v.float().clone() for k, v in live.items()} if args.ema_horizon_frac else {}
    run.sync()
    t0 = clock()
    while True:
        last_step = step == args.iterations or (stop_after_step is not None and step >= stop_after_step)
        if last_step or (args.val_loss_every > 0 and step % args.val_loss_every == 0):
            run.sync()
            training_time_ms += 1000.0 * (clock() - t0)
            if last_step and average:  # from here on (last validation, GPTQ, export) the model is the average
                base_model.load_state_dict(average)
                log(f"ema:applied horizon_frac:{args.ema_horizon_frac}")
            val_loss, val_bpb = eval_val(run, training.model, val, 0)
            log(f"step:{step}/{args.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} "
                f"train_time:{training_time_ms:.0f}ms step_avg:{training_time_ms / max(step, 1):.2f}ms")
            run.sync()
            t0 = clock()
        if last_step:
            if stop_after_step is not None and step < args.iterations:
                log(f"stopping_early: wallclock_cap train_time:{training_time_ms:.0f}ms step:{step}/{args.iterations}")
            break

        elapsed_ms = training_time_ms + 1000.0 * (clock() - t0)
        used = budget_used(step, elapsed_ms, args.iterations, max_wallclock_ms)
        lr_scale = lr_multiplier(step, elapsed_ms, args.iterations, args.warmdown_iters, max_wallclock_ms,
                                 args.warmdown_frac)
        train_loss = forward_backward(run, training.model, loader)
        training.muon.param_groups[0]["momentum"] = muon_momentum(step, used, args)
        optimizer_step(run, training, lr_scale)
        step += 1

        approx_time_ms = training_time_ms + 1000.0 * (clock() - t0)
        reached_cap = max_wallclock_ms is not None and approx_time_ms >= max_wallclock_ms
        spent = budget_used(step, approx_time_ms, args.iterations, max_wallclock_ms)
        if run.distributed and max_wallclock_ms is not None:  # every rank stops, loops and averages by one clock
            flags = torch.tensor([float(reached_cap), spent], dtype=torch.float64, device=run.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            reached_cap, spent = bool(flags[0]), float(flags[1])
        if average:  # every rank keeps its own: the same weights and fractions give the same average
            decay = math.exp((averaged_frac - spent) / args.ema_horizon_frac)
            torch._foreach_lerp_([*average.values()], [v.float() for v in live.values()], 1 - decay)
            averaged_frac = spent
        if args.recur_layers > 0 and spent >= args.recur_from_frac and not base_model.looped:
            base_model.looped = True
            log(f"recurrence:on steps_done:{step} order:{','.join(map(str, base_model.block_order()))}")
        if stop_after_step is None and reached_cap:
            stop_after_step = step
        if args.train_log_every > 0 and (step <= 10 or step % args.train_log_every == 0 or stop_after_step):
            if run.distributed:  # the global batch's mean loss, not rank 0's share
                dist.all_reduce(train_loss, op=dist.ReduceOp.SUM)
                train_loss /= run.world_size
            log(f"step:{step}/{args.iterations} train_loss:{train_loss.item():.4f} "
                f"train_time:{approx_time_ms:.0f}ms step_avg:{approx_time_ms / step:.2f}ms")

    cuda = run.device.type == "cuda"  # the CPU says 0
    log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20 if cuda else 0} MiB "
        f"reserved: {torch.cuda.max_memory_reserved() // 2**20 if cuda else 0} MiB")
    return training_time_ms


# -----------------------------------------------------------------------------
# EXPORT AND SCORE
# GPTQ's calibration (training time, within the cap), the artifact, and the score of the model rebuilt from it.
# -----------------------------------------------------------------------------
def calibrate_gptq(run: Run, base_model: GPT, loader: DistributedTokenLoader, training_ms: float) -> dict[str, Tensor]:
    """The Hessians, timed: with the loop's time, within MAX_WALLCLOCK_SECONDS?"""
    args, capped = run.args, run.args.max_wallclock_seconds > 0
    hessians, ms = run.timed(lambda: collect_hessians(base_model, loader, args, run.grad_accum_steps))
    reserve_ms, n = (1000.0 * args.gptq_reserve_seconds if capped else 0.0), args.gptq_calib_batches
    run.log(f"gptq_calibration batches:{n} tokens:{n * args.train_batch_tokens} time:{ms:.0f}ms "
            f"reserve:{reserve_ms:.0f}ms")
    if capped and training_ms + ms > 1000.0 * args.max_wallclock_seconds:
        run.log(f"warning: training {training_ms:.0f}ms + calibration overran MAX_WALLCLOCK_SECONDS: "
                f"raise GPTQ_RESERVE_SECONDS")
    return hessians


def export(run: Run, base_model: GPT, code_bytes: int, paths: dict[str, Path],
           hessians: dict[str, Tensor] | None = None) -> None:
    """Rank 0 writes the raw weights and the artifact (int8+zlib for the seed), and logs the sizes that count."""
    if run.rank != 0:
        return
    log, state, args, label = run.log, base_model.state_dict(), run.args, export_label(run.args)
    torch.save(state, paths["raw"])
    raw_bytes = paths["raw"].stat().st_size
    log(f"Serialized model: {raw_bytes} bytes")
    log(f"Code size: {code_bytes} bytes")
    log(f"Total submission size: {raw_bytes + code_bytes} bytes")
    quant_obj, stats = quantize_state_dict(state, args.quant_bits, args.quant_clip_sigmas, hessians,
                                           args.gptq_damp, (args.embed_bits, args.embed_clip_sigmas))
    blob, torch_bytes = serialize_artifact(quant_obj, args.compressor)
    paths["artifact"].write_bytes(blob)
    log(f"Serialized model {label}: {len(blob)} bytes (payload:{stats['payload_bytes']} "
        f"raw_torch:{torch_bytes} payload_ratio:{stats['tensor_bytes'] / max(stats['payload_bytes'], 1):.2f}x)")
    log_submission_size(run, label, len(blob) + code_bytes)
    log(f"artifact:{paths['artifact']}")


def log_submission_size(run: Run, label: str, total: int) -> None:
    run.log(f"Total submission size {label}: {total} bytes")
    margin = ARTIFACT_LIMIT_BYTES - total  # over: the raw weights stay, so re-exporting needs no new training
    over = "" if margin >= 0 else " OVER: re-export them coarser (tools/requantize.py), score that by EVAL_ARTIFACT"
    run.log(f"artifact_limit:{ARTIFACT_LIMIT_BYTES} margin:{margin} bytes{over}")


def report_roundtrip(run: Run, model: nn.Module, val: Validation, ttt: ScoreFirstTTT | None) -> None:
    """The score of record: the rebuilt model on the whole split, in sliding windows with EVAL_STRIDE, TTT with ttt."""
    stride = sliding_stride(run.args.eval_stride, run.args.train_seq_len)
    if stride:  # the non-overlapping score too: it is cheap and shows what the sliding windows add
        (val_loss, val_bpb), ms = run.timed(lambda: eval_val(run, model, val, 0))
        run.log(f"roundtrip_without_sliding val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} eval_time:{ms:.0f}ms")
        run.log(f"final_eval:sliding_window stride:{stride} context_min:{run.args.train_seq_len - stride} "
                f"(after the first window) targets:{val.tokens.size - 1}")
    (val_loss, val_bpb), ms = run.timed(lambda: eval_val(run, model, val, stride, ttt))
    if ttt:
        run.log(f"ttt epochs:{ttt.epochs} lr:{ttt.lr} chunk_tokens:{ttt.chunk_tokens} chunks:{ttt.chunks} "
                f"train_seqs:{ttt.train_seqs}")
    name = f"final_{export_label(run.args).replace('+', '_')}_roundtrip"  # final_int8_zlib_roundtrip for the seed
    run.log(f"{name} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f} eval_time:{ms:.0f}ms")
    run.log(f"{name}_exact val_loss:{val_loss:.8f} val_bpb:{val_bpb:.8f}")


# -----------------------------------------------------------------------------
# MAIN
# -----------------------------------------------------------------------------
def main() -> None:
    code = Path(__file__).read_text(encoding="utf-8")
    args = Hyperparameters()

    # ---- the inputs (files, tokenizer, artifact), then the run's processes, settings and device --------------
    artifact = args.eval_artifact or None  # set: score this artifact instead of training
    train_files, val_files = find_shards(args.data_path, need_train=not artifact)
    sp = load_tokenizer(args.tokenizer_path, args.vocab_size)
    val_tokens = load_validation_tokens(val_files, args.train_seq_len, args.vocab_size)
    if artifact:  # the log then names how the artifact was made, whatever QUANT_BITS and COMPRESSOR say
        artifact_state, args.quant_bits, args.compressor = load_artifact(artifact)
    run = setup_run(args, os.environ)
    # Opening the stream reads the first train shard, so a bad one fails here, before any training work.
    loader = None if artifact else DistributedTokenLoader(train_files, args.vocab_size, run.rank, run.world_size,
                                                          run.device)

    # ---- run identity, log: rank 0 names the run and claims its files; all ranks get the name or the error -
    shared = [args.run_id or f"{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}", ""]
    if run.rank == 0:
        try:
            claim_run_paths(shared[0], writes_model=not artifact, quant_bits=args.quant_bits)
        except ConfigError as e:
            shared[1] = str(e)
    if run.distributed:  # every rank stops if rank 0 cannot write, rather than wait for it forever
        dist.broadcast_object_list(shared, src=0)
    if shared[1]:
        raise ConfigError(shared[1])
    args.run_id = shared[0]
    paths = run_paths(args.run_id, args.quant_bits)
    if run.rank == 0:
        print(paths["log"], flush=True)
        run.log_path = paths["log"]
    environment, hardware = describe_environment(run.device, run.world_size)
    for text in (code, "=" * 100, environment, "=" * 100):
        run.log(text, console=False)
    run.log(args.as_line())
    run.log(hardware)
    for seed_generator in (random.seed, np.random.seed, torch.manual_seed):
        seed_generator(args.seed)

    # ---- the metric --------------------------------------------------------------------------
    # A rank scores VAL_BATCH_SIZE / MICRO_BATCHES tokens a batch: on any number of GPUs, the seed's batch on 8.
    val = Validation(val_tokens, build_byte_tables(sp, args.vocab_size, run.device), args.train_seq_len,
                     args.val_batch_size // MICRO_BATCHES // args.train_seq_len)
    run.log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={args.tokenizer_path}")
    run.log(f"train_loader:dataset:{Path(args.data_path).resolve().name} train_shards:{len(train_files)}")
    run.log(f"val_loader:shards pattern={Path(args.data_path) / 'fineweb_val_*.bin'} "
            f"tokens:{(val_tokens.size - 1) // args.train_seq_len * args.train_seq_len}")  # the seed's whole sequences

    # ---- model and optimizers ----------------------------------------------------------------
    training = build_training(run)
    base_model = training.base_model
    run.log(f"model_params:{sum(p.numel() for p in base_model.parameters())}")
    run.log(f"world_size:{run.world_size} grad_accum_steps:{run.grad_accum_steps}")
    kernels = ("cudnn", "flash", "mem_efficient", "math")  # the published script's line, and on the CPU "cpu"
    run.log("sdp_backends:" + (" ".join(f"{k}={getattr(torch.backends.cuda, f'{k}_sdp_enabled')()}" for k in kernels)
                               if run.device.type == "cuda" else "cpu"))
    run.log(f"sdpa_backend:{args.sdpa_backend}" + (f" ({run.sdpa_fallback})" if run.sdpa_fallback else ""))
    run.log(f"attention_mode:gqa num_heads:{args.num_heads} num_kv_heads:{args.num_kv_heads}")
    embed_lr, head_lr = (args.tied_embed_lr, 0.0) if args.tie_embeddings else (args.embed_lr, args.head_lr)
    run.log(f"tie_embeddings:{args.tie_embeddings} embed_lr:{embed_lr} head_lr:{head_lr} "
            f"matrix_lr:{args.matrix_lr} scalar_lr:{args.scalar_lr}")
    run.log(f"train_batch_tokens:{args.train_batch_tokens} train_seq_len:{args.train_seq_len} "
            f"iterations:{args.iterations} warmup_steps:{args.warmup_steps} "
            f"max_wallclock_seconds:{args.max_wallclock_seconds:.3f}")
    run.log(f"seed:{args.seed}")

    # ---- train and export, or take an existing artifact --------------------------------------
    code_bytes = len(code.encode("utf-8"))
    if artifact:
        run.log(f"eval_artifact:{artifact} bytes:{Path(artifact).stat().st_size}")
        log_submission_size(run, export_label(args), Path(artifact).stat().st_size + code_bytes)
    else:
        if args.warmup_steps > 0:
            warmup_and_reset(run, training, loader)
        training_ms = train(run, training, loader, val)
        base_model.looped = args.recur_layers > 0  # calibrated as scored, even if the switch never came
        hessians = calibrate_gptq(run, base_model, loader, training_ms) if args.quant_gptq else None
        export(run, base_model, code_bytes, paths, hessians)
        if run.distributed:
            dist.barrier()  # the artifact is on disk before any rank reads it
        artifact = str(paths["artifact"])
        artifact_state = load_artifact(artifact)[0]

    # ---- the score: the model rebuilt from the artifact's bytes ------------------------------
    load_weights(base_model, artifact_state, artifact)
    # The bf16 tied embedding would round SGD's small steps away: TTT trains the fp32 parameters.
    ttt = ScoreFirstTTT([p for p in base_model.parameters() if p.dtype == torch.float32], args.ttt_epochs, args.ttt_lr,
                        args.ttt_chunk_tokens) if args.ttt_epochs else None
    report_roundtrip(run, training.model, val, ttt)
    if run.distributed:
        dist.barrier()  # no rank tears down while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        exit_with(e)
