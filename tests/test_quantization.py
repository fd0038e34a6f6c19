"""The export: int8 rows as the seed writes them, intN rows with a std clip, GPTQ, the artifact's
compressors (the rANS coder among them) and loading."""

from __future__ import annotations

import io
import lzma
import zlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import train_gpt
from conftest import SEED_MODEL, leave_gloo, quantize


def test_quantize_round_trip_exactness_error_bound_and_sizes():
    torch.manual_seed(0)
    w = torch.randn(300, 400) * 0.05
    w[3, 7] = 40.0  # an outlier: at 400 values a row's 99.99984th percentile is nearly its maximum
    state = {
        "big": w, "big_bf16": (torch.randn(256, 300) * 0.3).bfloat16(),
        "vector_big": torch.randn(70_000) * 2.0,
        "small": torch.randn(64, 64), "small_bf16": torch.randn(100).bfloat16(),
        "blocks.0.attn_scale": torch.randn(512), "blocks.0.resid_mix": torch.randn(2, 512),
        "step_count": torch.tensor([3, 4], dtype=torch.int64),
    }
    obj, stats = quantize(state)
    blob, torch_bytes = train_gpt.serialize_artifact(obj, "zlib")
    back = train_gpt.dequantize_state_dict(torch.load(io.BytesIO(zlib.decompress(blob))))
    assert set(back) == set(state) and all(back[k].dtype == state[k].dtype for k in state)
    # kept tensors: control tensors and integers bit-exact, the rest through fp16 exactly
    for name in ("blocks.0.attn_scale", "blocks.0.resid_mix", "step_count", "small_bf16"):
        assert torch.equal(back[name], state[name]), name
    assert torch.equal(back["small"], state["small"].half().float())
    # int8 rows: within half a step of the clipped weight, plus the fp16 rounding of the scale and,
    # for a bf16 tensor, the final cast back to bf16
    for name in ("big", "big_bf16"):
        t = state[name].float()
        clip = torch.quantile(t.abs(), 99.99984 / 100, dim=1)
        scale32 = (clip / 127).clamp_min(1 / 127)
        scale16 = obj["scales"][name].float()
        assert obj["quantized"][name].dtype == torch.int8 and obj["scales"][name].shape == (t.shape[0],)
        bound = (scale32 / 2 + 127 * (scale16 - scale32).abs() + 1e-7)[:, None]
        if state[name].dtype == torch.bfloat16:
            bound = bound + back[name].float().abs() * 2 ** -8
        err = (back[name].float() - torch.clamp(t, -clip[:, None], clip[:, None])).abs()
        assert (err <= bound).all(), name
    assert abs(back["big"][3, 7] - 40.0) < 0.2 and obj["scales"]["big"][0] == torch.tensor(1 / 127).half()
    err = (back["vector_big"] - state["vector_big"]).abs().max()
    assert err <= float(obj["scales"]["vector_big"]) / 2 + 1e-6 and obj["scales"]["vector_big"].ndim == 0
    expected_payload = (300 * 400 + 2 * 300) + (256 * 300 + 2 * 256) + (70_000 + 4) + 64 * 64 * 2 + 100 * 2 \
        + 512 * 4 + 1024 * 4 + 16
    assert stats["payload_bytes"] == expected_payload
    assert stats["tensor_bytes"] == sum(t.numel() * t.element_size() for t in state.values())
    assert torch_bytes > stats["payload_bytes"] and len(blob) < torch_bytes


def test_model_round_trips_through_an_artifact_file(tmp_path):
    env = dict(SEED_MODEL, VOCAB_SIZE="512", NUM_LAYERS="3", MODEL_DIM="160", NUM_HEADS="4", NUM_KV_HEADS="2")
    model = train_gpt.build_model(train_gpt.Hyperparameters(env), torch.device("cpu"))
    path = tmp_path / "m.int8.ptz"
    path.write_bytes(train_gpt.serialize_artifact(quantize(model.state_dict())[0], "zlib")[0])
    fresh = train_gpt.build_model(train_gpt.Hyperparameters(dict(env, SEED="2")), torch.device("cpu"))
    train_gpt.load_weights(fresh, train_gpt.load_artifact(str(path))[0], str(path))
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert a.dtype == b.dtype and (a.float() - b.float()).abs().max() <= 1 / 127, name
    wider = train_gpt.build_model(train_gpt.Hyperparameters(dict(env, MLP_MULT="3")), torch.device("cpu"))
    with pytest.raises(train_gpt.ConfigError, match="has shape"):
        train_gpt.load_weights(wider, train_gpt.load_artifact(str(path))[0], str(path))


def export_state() -> dict[str, torch.Tensor]:
    """A small state with one tensor of each export path: the tied embedding, block matrices
    (fp32 and bf16), a matrix small enough to stay fp16, a control tensor and a big vector."""
    torch.manual_seed(0)
    return {"tok_emb.weight": torch.randn(512, 160) * 0.02, "blocks.0.mlp.fc.weight": torch.randn(480, 160) * 0.05,
            "blocks.0.mlp.proj.weight": (torch.randn(160, 480) * 0.05).bfloat16(),
            "blocks.0.attn.c_q.weight": torch.randn(160, 160), "blocks.0.attn_scale": torch.randn(160),
            "vector_big": torch.randn(70_000)}


def published_int8_export(state: dict[str, torch.Tensor]) -> dict:
    """SPEC.md's export ("Export and the roundtrip"), as the published script writes its dict."""
    obj = dict(__quant_format__="int8_clean_per_row_v1", quantized={}, scales={}, dtypes={}, passthrough={},
               qmeta={}, passthrough_orig_dtypes={})
    for name, t in state.items():
        if t.numel() <= 65_536:  # kept: control tensors as float32, others as float16
            control = any(p in name for p in ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight"))
            if not control:
                obj["passthrough_orig_dtypes"][name] = str(t.dtype).removeprefix("torch.")
            obj["passthrough"][name] = t.float() if control else t.half()
            continue
        w, q_max = t.float(), 127
        if w.ndim == 2:  # per row: clip at the 99.99984th percentile of |w|, scale clip/127, at least 1/127
            clip = torch.quantile(w.abs(), 0.9999984, dim=1)
            scale = (clip / q_max).clamp_min(1 / q_max)
            q = torch.round(torch.maximum(torch.minimum(w, clip[:, None]), -clip[:, None]) / scale[:, None])
            obj["scales"][name], obj["qmeta"][name] = scale.half(), dict(scheme="per_row", axis=0)
        else:  # one scale for the tensor
            clip = float(torch.quantile(w.abs().flatten(), 0.9999984))
            scale = torch.tensor(clip / q_max if clip > 0 else 1.0)
            q = torch.round(w.clamp(-clip, clip) / scale)
            obj["scales"][name] = scale
        obj["quantized"][name] = q.clamp(-q_max, q_max).to(torch.int8)
        obj["dtypes"][name] = str(t.dtype).removeprefix("torch.")
    return obj


def test_seed_export_is_the_published_scripts_tensor_by_tensor(tmp_path):
    """QUANT_BITS=8 with zlib writes the published script's dict, every tensor equal in dtype and value,
    and the artifact is that dict through torch.save and zlib level 9."""
    state = export_state()
    obj = quantize(state, bits=8, clip_sigmas=1.0)[0]  # sigmas: only below 8 bits
    want = published_int8_export(state)
    assert obj.keys() == want.keys()
    for part in ("quantized", "scales", "passthrough"):
        assert obj[part].keys() == want[part].keys(), part
        for name, t in want[part].items():
            assert obj[part][name].dtype == t.dtype and torch.equal(obj[part][name], t), (part, name)
    for part in ("dtypes", "qmeta", "passthrough_orig_dtypes", "__quant_format__"):
        assert obj[part] == want[part], part
    blob = train_gpt.serialize_artifact(obj, "zlib")[0]
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert zlib.decompress(blob) == buf.getvalue() and blob == zlib.compress(buf.getvalue(), 9)
    (tmp_path / "seed.int8.ptz").write_bytes(blob)
    assert train_gpt.load_artifact(str(tmp_path / "seed.int8.ptz"))[1:] == (8, "zlib")


@pytest.mark.parametrize("bits, sigmas", [(6, 12.85), (5, 2.0), (7, 3.0)])
def test_intn_rows_clip_at_sigmas_and_round_within_half_a_step(bits, sigmas):
    state, levels = export_state(), 2 ** (bits - 1) - 1
    state["blocks.0.mlp.fc.weight"][5] = 0.0
    obj = quantize(state, bits=bits, clip_sigmas=sigmas)[0]
    back = train_gpt.dequantize_state_dict(obj)
    for name in ("blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"):
        t, q, scale16 = state[name].float(), obj["quantized"][name], obj["scales"][name].float()
        assert obj["qmeta"][name] == dict(scheme="per_row", axis=0, bits=bits) and q.dtype == torch.int8
        assert q.abs().max() <= levels and back[name].dtype == state[name].dtype
        clip = sigmas * torch.from_numpy(t.double().numpy().std(axis=1)).float()  # population std
        scale32 = clip / levels
        rows = clip > 0
        assert torch.allclose(scale16[rows], scale32[rows], rtol=1e-3)  # an unbiased std would be 0.3% off
        clipped = torch.maximum(torch.minimum(t, clip[:, None]), -clip[:, None])
        bound = (scale16 / 2 + levels * (scale16 - scale32).abs() + 1e-7)[:, None]
        if state[name].dtype == torch.bfloat16:
            bound = bound + back[name].float().abs() * 2 ** -8
        assert ((back[name].float() - clipped).abs() <= bound)[rows].all(), name
        assert (q[rows][t[rows].abs() >= clip[rows, None]].abs() == levels).all(), "beyond the clip: the last level"
        if sigmas < 3.5:
            assert (q.abs() == levels).any(), "a clip inside the rows' range uses the outer levels"
    fc = "blocks.0.mlp.fc.weight"
    assert obj["scales"][fc][5] > 0 and not obj["quantized"][fc][5].any() and not back[fc][5].any(), "zero row"
    # A row so small that its fp16 scale (1.4 subnormal steps) rounds down to one step keeps to the levels.
    tiny = 1.4 * 2 ** -24 * levels
    q, scale = train_gpt.quantize_rows_nearest(torch.tensor([[tiny, -tiny] * 4]), bits, clip_sigmas=1.0)
    assert scale.item() == 2 ** -24 and q.abs().max() == levels
    # The tied embedding keeps the seed's int8 quantile path; the rest is exported as at 8 bits.
    q8, scale8 = train_gpt.quantize_tensor(state["tok_emb.weight"])
    assert torch.equal(obj["quantized"]["tok_emb.weight"], q8) and torch.equal(obj["scales"]["tok_emb.weight"], scale8)
    assert obj["qmeta"]["tok_emb.weight"] == dict(scheme="per_row", axis=0)
    seed = quantize(state)[0]
    assert torch.equal(obj["quantized"]["vector_big"], seed["quantized"]["vector_big"])
    assert obj["passthrough"].keys() == seed["passthrough"].keys() == {"blocks.0.attn.c_q.weight",
                                                                       "blocks.0.attn_scale"}


@pytest.mark.parametrize("bits", [8, 6])
def test_embed_bits_put_the_embedding_alone_on_an_sd_clipped_grid(bits):
    """EMBED_BITS=7 exports the tied embedding as the block matrices' intN rows are (clip = EMBED_CLIP_SIGMAS
    standard deviations of the row), whatever QUANT_BITS is; every other tensor is exported as without it. Rows
    whose int8 step is set by their max (not by the 1/127 floor) shrink under lzma by over a bit per weight."""
    state, emb = export_state(), "tok_emb.weight"
    state[emb] = torch.randn(4096, 160)  # the max of a row, about 2.8 sigma, sets int8's step: 0.022 sigma
    plain = quantize(state, bits=bits, clip_sigmas=12.85)[0]
    obj = quantize(state, bits=bits, clip_sigmas=12.85, embed=(7, 14.0))[0]
    q, scale = train_gpt.quantize_rows_nearest(state[emb], 7, clip_sigmas=14.0)
    assert torch.equal(obj["quantized"][emb], q) and torch.equal(obj["scales"][emb], scale)
    assert obj["qmeta"][emb] == dict(scheme="per_row", axis=0, bits=7) and q.abs().max() <= 63
    step = 14.0 * state[emb].std(dim=1, correction=0) / 63
    assert torch.allclose(obj["scales"][emb].float(), step, rtol=1e-3)
    back = train_gpt.dequantize_state_dict(obj)[emb]
    assert ((back - state[emb]).abs() <= obj["scales"][emb].float()[:, None] / 2 + 1e-6).all(), "no row clips at 14σ"
    for part in ("quantized", "scales", "passthrough"):
        for name, t in plain[part].items():
            assert name == emb or torch.equal(obj[part][name], t), (part, name)
    assert obj.get("bits") == plain.get("bits") == (bits if bits < 8 else None)
    size8, size7 = (len(train_gpt.serialize_artifact(o, "lzma")[0]) for o in (plain, obj))
    assert size8 - size7 > state[emb].numel() / 8, (size8, size7)  # int7 at 14 sigma: steps of 0.22 sigma


def dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


@pytest.mark.parametrize("bits", [5, 6, 7])
def test_gptq_keeps_the_layer_output_closer_than_rounding_to_nearest(bits):
    """Correlated inputs, as a layer sees them: GPTQ on the same grid (the same fp16 scales and
    levels, so the same format) gives a smaller output error X (W - Wq)^T."""
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(4096, 192, generator=gen) @ torch.randn(192, 192, generator=gen)
    x = x * torch.rand(192, generator=gen) * 3  # inputs of unequal energy, as after a norm's gains
    w = torch.randn(160, 192, generator=gen) * 0.05
    q_rtn, s_rtn = train_gpt.quantize_rows_nearest(w, bits, 6.0)
    q, scale = train_gpt.quantize_rows_gptq(w, x.T @ x, bits, 6.0, damp=0.01)
    assert torch.equal(scale, s_rtn) and q.dtype == torch.int8 and q.shape == w.shape
    assert q.abs().max() <= 2 ** (bits - 1) - 1
    err_rtn = torch.linalg.norm(x @ (w - dequantized(q_rtn, s_rtn)).T)
    err = torch.linalg.norm(x @ (w - dequantized(q, scale)).T)
    assert err < 0.7 * err_rtn, (err, err_rtn)
    assert not torch.equal(q, q_rtn) and (q.float() - q_rtn.float()).abs().mean() < 1, "a nearby grid point"


def test_gptq_without_input_correlation_is_rounding_to_nearest():
    """A diagonal H (uncorrelated inputs; damping keeps it diagonal) gives no error anything to move
    onto: exactly round-to-nearest, whatever the inputs' energies, even with no input ever nonzero
    (H = 0, which damping alone cannot make invertible)."""
    torch.manual_seed(0)
    w = torch.randn(96, 300) * 0.05
    w[:, 7] = 1.0  # beyond the clip: the outer level, as round-to-nearest
    q_rtn, s_rtn = train_gpt.quantize_rows_nearest(w, 6, 6.0)
    energies = torch.rand(300)
    energies[11] = 0.0
    for hessian in (torch.eye(300), torch.diag(energies), torch.zeros(300, 300)):
        q, scale = train_gpt.quantize_rows_gptq(w, hessian, 6, 6.0, damp=0.01)
        assert torch.equal(q, q_rtn) and torch.equal(scale, s_rtn)


def test_gptq_column_order_follows_the_inputs_and_is_undone():
    """Act-order: columns go by falling diag H, so permuting the inputs (columns of W, rows and
    columns of H) permutes the result and nothing else."""
    torch.manual_seed(1)
    x = torch.randn(2048, 160) @ torch.randn(160, 160) * torch.rand(160)
    w = torch.randn(64, 160) * 0.05
    perm = torch.randperm(160)
    q = train_gpt.quantize_rows_gptq(w, x.T @ x, 6, 6.0, 0.01)[0]
    q_perm = train_gpt.quantize_rows_gptq(w[:, perm], (x.T @ x)[perm][:, perm], 6, 6.0, 0.01)[0]
    assert torch.equal(q[:, perm], q_perm)


def test_export_rounds_by_gptq_only_the_intn_matrices_with_a_hessian():
    state = export_state()
    fc, proj = "blocks.0.mlp.fc.weight", "blocks.0.mlp.proj.weight"
    x = torch.randn(1024, 160) @ torch.randn(160, 160)
    hessians = {fc: x.T @ x, "tok_emb.weight": x.T @ x}  # the tied embedding stays int8 regardless
    plain = quantize(state, bits=6, clip_sigmas=6.0)[0]
    gptq = quantize(state, bits=6, clip_sigmas=6.0, hessians=hessians, damp=0.01)[0]
    expected = train_gpt.quantize_rows_gptq(state[fc], hessians[fc], 6, 6.0, 0.01)[0]
    assert torch.equal(gptq["quantized"][fc], expected) and not torch.equal(expected, plain["quantized"][fc])
    for name in state:
        assert torch.equal(gptq["scales"].get(name, torch.tensor(0)), plain["scales"].get(name, torch.tensor(0)))
        if name != fc:
            assert torch.equal(gptq["quantized"].get(name, torch.tensor(0)), plain["quantized"].get(name, torch.tensor(0)))
    assert gptq["qmeta"] == plain["qmeta"] and gptq.keys() == plain.keys(), "one format: the loader needs no change"
    assert plain["quantized"][proj].shape == state[proj].shape


class RecordingLoader:
    """Hands out fixed token batches and remembers each request."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches, self.requests = iter(batches), []

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int):
        self.requests.append((global_tokens, seq_len, grad_accum_steps))
        x = next(self.batches)
        return x, x


# The Hessian tests' shapes; alone they keep the defaults' switches.
CALIBRATION_ARGS = dict(VOCAB_SIZE="512", NUM_LAYERS="2", MODEL_DIM="64", NUM_HEADS="4", NUM_KV_HEADS="2",
                        TRAIN_SEQ_LEN="32", TRAIN_BATCH_TOKENS="512", GPTQ_CALIB_BATCHES="3")


def test_hessians_sum_every_linear_input_over_the_calibration_batches():
    args = train_gpt.Hyperparameters(dict(SEED_MODEL, **CALIBRATION_ARGS, TIE_EMBEDDINGS="0"))
    model = train_gpt.build_model(args, torch.device("cpu"))
    batches = [torch.randint(0, 512, (1, 32)) for _ in range(3 * 2)]
    loader = RecordingLoader(batches)
    hessians = train_gpt.collect_hessians(model, loader, args, grad_accum_steps=2)
    assert loader.requests == [(512, 32, 2)] * 6, "training batches, read as a training step reads them"
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, train_gpt.CastedLinear)}
    assert set(hessians) == linears and "lm_head.weight" in linears and len(linears) == 2 * 6 + 1
    assert not any(m._forward_pre_hooks for m in model.modules()), "the hooks are gone"
    # The first layer's attention reads the normed embedding (resid_mix starts at (1, 0)).
    inputs = torch.cat([F.rms_norm(F.rms_norm(model.tok_emb(x).float(), (64,)), (64,))[0] for x in batches])
    torch.testing.assert_close(hessians["blocks.0.attn.c_q.weight"], inputs.T @ inputs, rtol=0.02, atol=0.5)
    assert torch.equal(hessians["blocks.0.attn.c_q.weight"], hessians["blocks.0.attn.c_v.weight"])
    assert hessians["blocks.0.mlp.proj.weight"].shape == (128, 128) and hessians["blocks.0.mlp.proj.weight"].dtype == torch.float32


def calibration_batches() -> list[torch.Tensor]:
    """Six micro-batches: one process reads them all (2 per batch); rank r of two reads r, r + 2, r + 4."""
    return [torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(6)]


def hessians_on_two_ranks(rank: int, world_size: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world_size)
    args = train_gpt.Hyperparameters(CALIBRATION_ARGS)
    model = train_gpt.build_model(args, torch.device("cpu"))
    loader = RecordingLoader(calibration_batches()[rank::world_size])
    torch.save(train_gpt.collect_hessians(model, loader, args, grad_accum_steps=1), f"{out_dir}/rank{rank}.pt")
    leave_gloo()


@pytest.mark.slow
def test_ranks_calibrate_on_their_share_and_all_end_with_the_whole_hessians(tmp_path):
    """Under torchrun each rank feeds its own micro-batches; after the all-reduce every rank holds what one
    process reading all of them sums, so GPTQ on rank 0 sees every calibration token."""
    args = train_gpt.Hyperparameters(CALIBRATION_ARGS)
    whole = train_gpt.collect_hessians(train_gpt.build_model(args, torch.device("cpu")),
                                       RecordingLoader(calibration_batches()), args, grad_accum_steps=2)
    torch.multiprocessing.spawn(hessians_on_two_ranks, args=(2, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert set(ranks[0]) == set(ranks[1]) == set(whole) and len(whole) == 2 * 6
    for name, h in whole.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        torch.testing.assert_close(ranks[0][name], h, rtol=1e-5, atol=1e-3, msg=name)


def test_every_compressor_loads_alike_and_says_how_it_was_made(tmp_path):
    obj = quantize(export_state(), bits=6)[0]
    loaded = {}
    for compressor, magic in (("zlib", b"\x78"), ("lzma", b"\xfd7zXZ\x00"), ("rans", b"\xfd7zXZ\x00")):
        blob, raw_bytes = train_gpt.serialize_artifact(obj, compressor)
        assert blob.startswith(magic)
        path = tmp_path / f"{compressor}.int6.ptz"
        path.write_bytes(blob)
        state, bits, found = train_gpt.load_artifact(str(path))
        assert (bits, found) == (6, compressor)
        loaded[compressor] = state, len(blob), raw_bytes
    (a, zlib_bytes, raw_a), (b, lzma_bytes, raw_b) = loaded["zlib"], loaded["lzma"]
    assert a.keys() == b.keys() == loaded["rans"][0].keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], loaded["rans"][0][k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in train_gpt.dequantize_state_dict(obj).items())
    assert raw_a == raw_b and lzma_bytes < zlib_bytes
    assert obj["quantized"], "the rANS path coded something (and left the caller's dict as it was)"


def rans_cases() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"int6": (torch.randn(301, 77, generator=gen) * 6).round().clamp(-31, 31).to(torch.int8),  # 23,177:
            "int8_extremes": torch.tensor([-127, 127, 0] * 700, dtype=torch.int8).view(30, 70),  # 2 lanes, 1 left
            "constant": torch.full((40, 40), -5, dtype=torch.int8), "one": torch.tensor([[127]], dtype=torch.int8),
            "vector": torch.randint(-127, 128, (5000,), generator=gen).to(torch.int8)}


@pytest.mark.parametrize("names", [[], ["one"], ["constant"], ["int6", "int8_extremes", "constant", "one", "vector"]])
def test_rans_gives_back_every_tensor_exactly(names):
    """Any mix of tensors: none (a model without big matrices), one value, one symbol only (zero bits), the
    int8 extremes, sizes that do not fill the last step of the lanes."""
    quantized = {name: rans_cases()[name] for name in names}
    back = train_gpt.rans_decode(train_gpt.rans_encode(quantized))
    assert list(back) == names
    for name in names:
        assert back[name].dtype == torch.int8 and back[name].shape == quantized[name].shape
        assert torch.equal(back[name], quantized[name]), name


def test_rans_decodes_with_the_lanes_it_was_written_with(monkeypatch):
    """The lane count is read from the artifact, not from today's rule: artifacts of another rule still load."""
    quantized = rans_cases()
    for lane_values in (1, 10**9):  # as many lanes as allowed, one lane
        monkeypatch.setattr(train_gpt, "RANS_LANE_VALUES", lane_values)
        coded = train_gpt.rans_encode(quantized)
        monkeypatch.undo()
        assert coded["states"].numel() == (train_gpt.RANS_LANES if lane_values == 1 else 1)
        back = train_gpt.rans_decode(coded)
        assert all(torch.equal(back[name], q) for name, q in quantized.items())


def test_a_broken_rans_stream_is_refused_in_one_line(tmp_path):
    obj = quantize({"w": torch.randn(512, 256)}, bits=6)[0]
    coded = torch.load(io.BytesIO(lzma.decompress(train_gpt.serialize_artifact(obj, "rans")[0])))
    coded["rans"]["words"] = torch.cat([coded["rans"]["words"], coded["rans"]["words"][:1]])  # one word too many
    buf = io.BytesIO()
    torch.save(coded, buf)
    (tmp_path / "broken.int6.ptz").write_bytes(lzma.compress(buf.getvalue()))
    with pytest.raises(ValueError, match="does not decode to its end"):
        train_gpt.rans_decode(coded["rans"])
    with pytest.raises(train_gpt.ConfigError, match=r"^cannot read artifact .*broken.int6.ptz \(the rANS stream"):
        train_gpt.load_artifact(str(tmp_path / "broken.int6.ptz"))


def test_rans_codes_within_a_hair_of_the_entropy_where_lzma_does_not():
    """Quantized weights are close to independent values, so their order-0 entropy bounds what a coder that
    ignores order can do: rANS lands within 0.2% of it (its lanes' final states included); lzma spends over 4% more."""
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(1024, 1024, generator=gen) / (12.85 / 31)).round().clamp(-31, 31).to(torch.int8)  # int6
    p = torch.bincount(q.flatten().long() + 128).double()
    p = p[p > 0] / q.numel()
    entropy_bytes = float(-(p * p.log2()).sum()) * q.numel() / 8
    coded = train_gpt.rans_encode({"w": q})
    stream_bytes = 2 * coded["words"].numel() + 4 * coded["states"].numel()
    assert entropy_bytes < stream_bytes < 1.002 * entropy_bytes
    assert len(lzma.compress(q.numpy().tobytes(), preset=9)) > 1.04 * entropy_bytes
    obj = quantize({"w": torch.randn(1024, 1024)}, bits=6, clip_sigmas=12.85)[0]
    rans_bytes, lzma_bytes = (len(train_gpt.serialize_artifact(obj, c)[0]) for c in ("rans", "lzma"))
    assert rans_bytes < 0.96 * lzma_bytes
    small = quantize({"w": torch.randn(512, 256)})[0]  # the seed's int8, 131,072 values: 16 lanes, not 1,024
    assert len(train_gpt.serialize_artifact(small, "rans")[0]) < len(train_gpt.serialize_artifact(small, "lzma")[0])


def test_an_artifact_says_its_bit_width_even_without_big_matrices(tmp_path):
    small = {"w": torch.randn(64, 64), "v": torch.randn(64)}  # nothing above KEEP_FLOAT_MAX_NUMEL
    path = tmp_path / "small.int6.ptz"
    path.write_bytes(train_gpt.serialize_artifact(quantize(small, bits=6)[0], "lzma")[0])
    assert train_gpt.load_artifact(str(path))[1:] == (6, "lzma")


def test_export_names_follow_the_settings():
    seed = train_gpt.Hyperparameters(dict(QUANT_BITS="8", COMPRESSOR="zlib"))
    int6 = train_gpt.Hyperparameters(dict(QUANT_BITS="6", COMPRESSOR="lzma"))
    assert train_gpt.export_label(seed) == "int8+zlib" and train_gpt.export_label(int6) == "int6+lzma"
    assert train_gpt.export_label(train_gpt.Hyperparameters({})) == "int6+rans"
    assert train_gpt.run_paths("r", 8)["artifact"] == Path("artifacts") / "r_model.int8.ptz"
    assert train_gpt.run_paths("r", 6)["artifact"] == Path("artifacts") / "r_model.int6.ptz"


@pytest.mark.parametrize("total, tail", [(16_000_000, "margin:0 bytes"), (16_000_001, "margin:-1 bytes OVER: re-export")])
def test_the_size_line_says_over_and_the_fix_only_past_the_limit(total, tail):
    lines = []
    run = type("Run", (), {"log": staticmethod(lines.append)})()
    train_gpt.log_submission_size(run, "int6+rans", total)
    assert lines[0] == f"Total submission size int6+rans: {total} bytes"
    assert lines[1].startswith(f"artifact_limit:16000000 {tail}")
    assert ("tools/requantize.py" in lines[1]) == (total > 16_000_000)
