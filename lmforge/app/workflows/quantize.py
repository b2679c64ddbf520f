"""Quantize a model directory into a new one: load, int8 or int4 Linear layers (compress/quantize.py, int4.py),
save with the step recorded in config.json's compression list."""
from __future__ import annotations

from pathlib import Path

import torch

from ...bundle import Bundle
from ...compress.int4 import GROUP, Int4Linear
from ...compress.quantize import SCHEMES, check_method, quantize_model
from ...files import check_destination
from ...interop import is_gguf_file, is_hf_dir
from ...interop.gguf_blocks import gguf_four_bit_weights
from ...modeldir import load_model_dir, read_model_config, save_model_dir


def quantize_dir(source: str | Path, destination: str | Path, method: str, force: bool = False) -> dict:
    """Quantize the model directory `source` (or a Hugging Face directory, or a GGUF file) into a new model
    directory `destination`; a summary dict (method, layers quantized and kept, weights file sizes before and
    after)."""
    check_method(method)
    source, destination = Path(source), Path(destination)
    if destination.resolve() == source.resolve():
        raise ValueError(f"destination '{destination}' is the source directory; write the quantized model elsewhere")
    check_destination(destination, force)
    if not is_hf_dir(source) and not is_gguf_file(source):
        _, meta = read_model_config(source)
        for step in meta.get("compression") or []:
            kind = step.get("kind") if isinstance(step, dict) else None
            if kind == "quantize":
                raise ValueError(f"'{source}' is already quantized ({step.get('method')}): quantize the original "
                                 "floating-point model directory instead")
            if kind == "lora":
                raise ValueError(f"'{source}' holds unmerged LoRA adapters: merge them first "
                                 f"(lmforge lora merge {source} merged), then quantize the merged directory")
    model, tokenizer, config, meta = load_model_dir(source, "cpu")
    model, done, kept = quantize_model(model, method)
    from_file = _file_groups(model, source, config) if method == "weight-int4" and is_gguf_file(source) else []
    spec = {"kind": "quantize", "method": method, "scheme": SCHEMES[method], "modules": done}
    if method == "weight-int4":  # its fast kernel computes in bf16: the rest of the model is saved in bf16 too
        spec["group_size"] = GROUP
        model = model.to(torch.bfloat16)
    # the source's evaluation numbers describe the floating-point weights: `lmforge compare` measures these
    info = {key: value for key, value in meta.items() if key != "metrics"}
    info["compression"] = [*(meta.get("compression") or []), spec]
    save_model_dir(destination, Bundle(model, tokenizer, config, info))
    before = source.stat().st_size if source.is_file() else sum(f.stat().st_size for f in source.glob("*.safetensors"))
    after = (destination / "model.safetensors").stat().st_size
    return {"method": method, "quantized": done, "kept": kept, "from_file": from_file, "bytes_before": before,
            "bytes_after": after}


def _file_groups(model, source: Path, config) -> list[str]:
    """Give the weight-int4 layers whose weights a GGUF file stores in 4-bit blocks (Q4_0, Q4_1, Q4_K) those
    blocks, not a quantization of their dequantized values (row by row: a q/k/v layer whose v is Q6_K keeps q's
    and k's blocks); the names of the layers that took any."""
    groups, taken = gguf_four_bit_weights(source, config), []
    for name, module in model.named_modules():
        if isinstance(module, Int4Linear) and f"{name}.weight" in groups:
            for first_row, part in groups[f"{name}.weight"]:
                module.set_groups(*part, first_row=first_row)
            taken.append(name)
    return taken
