"""Re-export a run's trained weights with other export settings, without training again.

    QUANT_GPTQ=0 QUANT_BITS=6 QUANT_CLIP_SIGMAS=6 COMPRESSOR=lzma python3 tools/requantize.py \\
        artifacts/RUN_model.pt artifacts/RUN_q6s6_model.int6.ptz
    EVAL_ARTIFACT=artifacts/RUN_q6s6_model.int6.ptz EVAL_STRIDE=0 TTT_EPOCHS=0 RUN_ID=RUN_q6s6 \\
        torchrun --standalone --nproc_per_node=1 train_gpt.py      # its score, as the run's roundtrip_without_sliding

Reads the raw weights a run saves beside its artifact (artifacts/<RUN_ID>_model.pt), quantizes and
compresses them exactly as train_gpt.py's export does under QUANT_BITS, QUANT_CLIP_SIGMAS, EMBED_BITS,
EMBED_CLIP_SIGMAS and COMPRESSOR, writes the artifact (never over an existing file) and prints one line:

    requantize: int6+lzma clip_sigmas:6.0 gptq:False embed_bits:8 embed_clip_sigmas:14.0 model_bytes:11234567 ...

With QUANT_GPTQ=1 (the default, as in train_gpt.py; 0: rounding to nearest) the rows are rounded by GPTQ.
Its Hessians come from the model rebuilt from the environment (the shape settings, VOCAB_SIZE, NUM_LAYERS,
MODEL_DIM, ..., must be the run's) on GPTQ_CALIB_BATCHES training batches of DATA_PATH from its first shard
(a run calibrates on the batches after its training, so its own GPTQ artifact may differ slightly), on the GPU
if there is one. A run's artifact over the limit, again at a coarser clip:

    QUANT_CLIP_SIGMAS=12 DATA_PATH=./data/datasets/fineweb10B_sp8192 python3 tools/requantize.py \\
        artifacts/RUN_model.pt artifacts/RUN_s12_model.int6.ptz

The score of an export is what train_gpt.py prints for it under EVAL_ARTIFACT. The process is set up as
train_gpt.py sets up one (setup_run: the settings checked, GPU 0 if there is one, TF32 matmuls, the attention
kernel probed), so GPTQ's Hessians are computed as in a run's own export.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise tg.ConfigError("usage: tools/requantize.py RAW_WEIGHTS.pt OUT.ptz (settings from QUANT_BITS, "
                             "QUANT_CLIP_SIGMAS, EMBED_BITS, EMBED_CLIP_SIGMAS, COMPRESSOR, QUANT_GPTQ)")
    raw, out = Path(argv[0]), Path(argv[1])
    if out.exists():
        raise tg.ConfigError(f"{out} already exists; name another output file")
    args = tg.Hyperparameters({**os.environ, "TTT_EPOCHS": "0"})  # no evaluation here, so no TTT chunk rule
    run = tg.setup_run(args, {})  # one process; the export settings are checked there
    try:
        state = torch.load(raw, map_location="cpu")
    except Exception as e:
        raise tg.ConfigError(f"cannot read weights {raw} ({tg.first_line(e)}); point at the "
                             f"artifacts/<RUN_ID>_model.pt a run wrote") from None
    obj, _ = tg.quantize_state_dict(state, args.quant_bits, args.quant_clip_sigmas, gptq_hessians(run, state, raw),
                                    args.gptq_damp, (args.embed_bits, args.embed_clip_sigmas))
    blob, _ = tg.serialize_artifact(obj, args.compressor)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    code_bytes = len(Path(tg.__file__).read_bytes())
    total = len(blob) + code_bytes
    print(f"requantize: {tg.export_label(args)} clip_sigmas:{args.quant_clip_sigmas} gptq:{args.quant_gptq} "
          f"embed_bits:{args.embed_bits} embed_clip_sigmas:{args.embed_clip_sigmas} model_bytes:{len(blob)} "
          f"code_bytes:{code_bytes} total_bytes:{total} "
          f"fits:{total <= tg.ARTIFACT_LIMIT_BYTES} out:{out}", flush=True)


def gptq_hessians(run: tg.Run, state: dict, raw: Path) -> dict | None:
    """With QUANT_GPTQ=1, train_gpt.py's calibration of these weights on DATA_PATH's training shards."""
    if not run.args.quant_gptq:
        return None
    train_files, _ = tg.find_shards(run.args.data_path)
    model = tg.build_model(run.args, run.device)
    tg.load_weights(model, state, str(raw))
    loader = tg.DistributedTokenLoader(train_files, run.args.vocab_size, 0, 1, run.device)
    return tg.collect_hessians(model, loader, run.args, run.grad_accum_steps)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except tg.ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
