"""Model directories: config.json + model.safetensors + tokenizer.json + README.md (a model card)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_model
from torch import nn

from ._version import __version__
from .bundle import Bundle
from .compress import save_weights
from .config import ModelConfig, describe_validation_error
from .devices import check_device, check_dtype
from .infer.chat_encode import end_of_turn
from .errors import ConfigError, ModelDirError, shape_mismatch
from .files import DamagedFileError, atomic_directory, read_json, verify_manifest, write_manifest
from .infer.chat_template import TEMPLATE_FILE
from .models import build_model, count_parameters, family_of, is_decoder, no_initialization
from .tokenizer import Tokenizer

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def save_model_dir(path: str | Path, bundle: Bundle) -> Path:
    """Write a model directory atomically. The bundle's meta (data, metrics, training) goes into config.json
    and the model card."""
    path = Path(path)
    model, tokenizer, config, info = bundle.model, bundle.tokenizer, bundle.config, bundle.meta or {}
    with atomic_directory(path) as temp:
        save_weights(model, temp / "model.safetensors", info)  # a compressed model may store its tensors packed
        tokenizer.save(temp / "tokenizer.json")
        # `info` may be a loaded config.json (fine-tuning): its old model section must not win over `config`
        meta = {**info, "format": "lmforge", "lmforge_version": __version__, "arch": config.arch,
                "dtype": _weights_dtype(model), "model": config.model_dump(exclude={"init"}),
                "tokenizer": {"kind": tokenizer.kind}}
        for role in ("eos_token", "bos_token", "pad_token"):
            if getattr(tokenizer, role, None) is not None:
                meta["tokenizer"][role] = getattr(tokenizer, role)
        template = meta.pop("chat_template", None)  # its own file, as Hugging Face writes it: readable, diffable
        if isinstance(template, str) and template:
            (temp / TEMPLATE_FILE).write_text(template, encoding="utf-8")
        (temp / "config.json").write_text(json.dumps(meta, indent=2))
        (temp / "README.md").write_text(model_card(model, tokenizer, config, info))
        for name, text in chat_files(tokenizer, info, is_decoder(model)).items():
            (temp / name).write_text(text)
        write_manifest(temp)  # sizes and checksums: a damaged file is named on load, never used silently
    return path


def _weights_dtype(model: nn.Module) -> str:
    """The dtype of the model's floating-point parameters, as config.json records it ("float32", "bfloat16")."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return str(dtype).removeprefix("torch.")


def read_model_config(path: str | Path) -> tuple[ModelConfig, dict]:
    """The ModelConfig and the whole config.json of a model directory, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise ModelDirError(f"model directory '{path}' does not exist")
    if not path.is_dir():
        raise ModelDirError(f"'{path}' is a file, not a model directory (expected a folder with {', '.join(REQUIRED)})")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    config_path = path / "config.json"
    meta = {}
    if config_path.is_file():
        meta = read_json(config_path, ModelDirError)
        if not isinstance(meta, dict):
            raise ModelDirError(f"'{config_path}' must hold a JSON object ({{...}}) with a 'model' section, "
                                f"not {type(meta).__name__}: {meta!r}")
    if "model_type" in meta and "format" not in meta:
        raise ModelDirError(f"'{path}' is a Hugging Face checkpoint (model_type={meta['model_type']!r}): load it with "
                            "LM.from_pretrained or load_model_dir (converted in memory), or `lmforge convert` it")
    if missing:
        hint = " (is it a run directory? its model is in final/ or checkpoints/step-N/)" if (path / "final").is_dir() or (path / "checkpoints").is_dir() else ""
        raise ModelDirError(f"'{path}' is not a model directory: missing {', '.join(missing)}{hint}")
    if not isinstance(meta.get("model"), dict):
        raise ModelDirError(f"'{config_path}' has no 'model' section (an object of model settings); "
                            "it was not written by lmforge")
    try:
        return ModelConfig.model_validate(meta["model"]), meta
    except ValidationError as error:
        raise ModelDirError(describe_validation_error(error, str(config_path)).replace(
            "invalid configuration", "unusable model settings").replace("\n  ", "\n  model.")) from None


def load_model_dir(path: str | Path, device: str = "cpu", dtype: str | torch.dtype | None = None) -> Bundle:
    """Load a Bundle (model, tokenizer, model config, config.json contents) from a model directory; a Hugging
    Face checkpoint directory (gpt2, bert, llama, qwen2) or a GGUF file (llama, gpt2) is converted in memory.
    `device` (auto, cpu, cuda, ...) and `dtype` (float32, bfloat16, float16; None keeps the saved one) are checked
    before anything is read."""
    from .interop import is_gguf_file, is_hf_dir, load_gguf, load_hf_dir

    device, dtype = str(check_device(device, "device")), check_dtype(dtype, "dtype")
    path = Path(path)
    if is_hf_dir(path):
        model, *rest = load_hf_dir(path, device)
        return Bundle(model.to(dtype=dtype) if dtype is not None else model, *rest)
    if is_gguf_file(path):
        model, *rest = load_gguf(path, device)
        return Bundle(model.to(dtype=dtype) if dtype is not None else model, *rest)
    config, meta = read_model_config(path)
    if dtype is None and meta.get("dtype") is not None:  # as saved (older directories were all float32)
        try:
            dtype = check_dtype(meta["dtype"], "dtype")
        except ConfigError as error:
            raise ModelDirError(f"'{path / 'config.json'}': {error}") from None
    with no_initialization():  # every weight is loaded below, strictly: nothing is drawn
        model = build_model(config)
        if meta.get("compression"):  # LoRA, pruned, quantized: rebuild the structure the weights were saved from
            from .compress import restore
            try:
                model = restore(model, config, meta, path)
            except ValueError as error:
                raise ModelDirError(str(error)) from None
    weights = path / "model.safetensors"
    check_weight_shapes(weights, model, config)
    try:  # the tensors only: a hand-edited config.json or model card is checked by reading it, not by checksum
        verify_manifest(path, (".safetensors",))
    except DamagedFileError as error:
        raise ModelDirError(str(error)) from None
    try:
        load_model(model, str(weights), strict=True, device=device)
    except Exception as error:  # safetensors raises several types for bad or mismatched files
        names = None if meta.get("compression") else names_mismatch(weights, model)
        raise ModelDirError(names or f"'{weights}' does not fit its config.json: {error}") from None
    tokenizer = _saved_tokenizer(path, meta)
    if (path / TEMPLATE_FILE).is_file():
        try:
            meta["chat_template"] = (path / TEMPLATE_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ModelDirError(f"'{path / TEMPLATE_FILE}' is not readable UTF-8 text: {error}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelDirError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}")
    model = model.to(device) if dtype is None else model.to(device, dtype)
    return Bundle(model.eval(), tokenizer, config, meta)


def read_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a model directory (with its end-of-text token) without building the model; a Hugging Face
    checkpoint's or a GGUF file's is converted."""
    from .interop import is_gguf_file, is_hf_dir

    path = Path(path)
    if is_hf_dir(path) or is_gguf_file(path):
        return load_model_dir(path).tokenizer
    _, meta = read_model_config(path)
    return _saved_tokenizer(path, meta)


def _saved_tokenizer(path: Path, meta: dict) -> Tokenizer:
    """A model directory's tokenizer.json with the eos/bos/pad tokens config.json's tokenizer section names."""
    tokenizer = Tokenizer.load(path / "tokenizer.json")
    roles = meta.get("tokenizer") or {}
    tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token = (roles.get(r) for r in ("eos_token", "bos_token",
                                                                                            "pad_token"))
    return tokenizer


def check_weight_shapes(weights: Path, model: nn.Module, config: ModelConfig) -> None:
    """Compare the file's tensor shapes with the model config.json describes, and name the setting that
    disagrees (e.g. "config.json says n_embd=32, the weights have 16") instead of a size-mismatch dump."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as error:  # not a safetensors file at all
        raise ModelDirError(f"'{weights}' is not a readable safetensors file: {error}") from None
    config_file = weights.parent / "config.json"
    fields = {name: getattr(config, name) for name in ("n_embd", "vocab_size", "block_size", "intermediate_size",
                                                       "type_vocab_size")}
    fields["labels (count)"] = len(config.labels)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name in shapes and shapes[name] != tuple(tensor.shape):
            raise shape_mismatch(config_file, name, tuple(tensor.shape), shapes[name], fields)
    layers = {int(n.split(".")[1]) for n in shapes if n.startswith("h.")}
    if layers and max(layers) + 1 != config.n_layer:
        raise ModelDirError(f"'{config_file}' says n_layer={config.n_layer}, the weights have {max(layers) + 1}")


def _listed(items: list[tuple[str, tuple]], most: int = 3) -> str:
    shown = ", ".join(f"{name} {list(shape)}" for name, shape in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def names_mismatch(weights: Path, model: nn.Module) -> str | None:
    """Words for a weights file whose tensor names disagree with the model config.json describes: the first
    tensors the file lacks and the first it has no place for, with their shapes; None when the names agree."""
    with safe_open(str(weights), framework="pt") as handle:
        shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    expected = model.state_dict()
    storage: dict[int, list[str]] = {}
    for name, tensor in expected.items():  # tied weights are stored once under one of their names
        storage.setdefault(tensor.data_ptr(), []).append(name)
    lacking = [(name, tuple(tensor.shape)) for name, tensor in expected.items() if name not in shapes
               and not any(other in shapes for other in storage[tensor.data_ptr()])]
    extra = [(name, shape) for name, shape in shapes.items() if name not in expected]
    if not lacking and not extra:
        return None
    parts = []
    if lacking:
        parts.append(f"the model it describes has tensors the file lacks: {_listed(lacking)}")
    if extra:
        parts.append(f"the file has tensors that model has no place for: {_listed(extra)}")
    return (f"'{weights}' does not fit '{weights.parent / 'config.json'}': " + "; ".join(parts)
            + " (was config.json edited, or the weights copied from another model?)")


def generation_ids(tokenizer: Tokenizer, info: dict) -> dict[str, int | list[int]]:
    """bos/eos/pad ids for generation_config.json; eos is a list when the chat template ends turns with a token
    of its own (ChatML's <|im_end|>), so a runtime stops at the end of the assistant's turn."""
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    turn = end_of_turn(info["chat_template"], tokenizer) if info.get("chat_template") else None
    if turn is not None and tokenizer.token_to_id(turn) not in eos:
        eos.append(tokenizer.token_to_id(turn))
    ids: dict[str, int | list[int]] = {}
    bos = getattr(tokenizer, "bos_id", None)
    if bos is not None:
        ids["bos_token_id"] = bos
    if eos:
        ids["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    ids["pad_token_id"] = tokenizer.pad_id
    return ids


def chat_files(tokenizer: Tokenizer, info: dict, causal: bool) -> dict[str, str]:
    """generation_config.json (its eos ids end chat turns) for a decoder that has a chat template, else nothing.
    Both directory formats write it; each writes chat_template.jinja itself (model directories here, Hugging
    Face exports with the tokenizer files)."""
    if not causal or not info.get("chat_template"):
        return {}
    return {"generation_config.json": json.dumps(generation_ids(tokenizer, info), indent=2)}


CARD_FACTS = ("base_model", "datasets", "license")


def card_front_matter(info: dict) -> list[str]:
    """The model card's YAML front matter (base_model, datasets, license, library_name) when meta records any of
    those facts (an SFT run does); JSON strings are valid YAML scalars."""
    facts = {key: info[key] for key in CARD_FACTS if info.get(key)}
    if not facts:
        return []
    lines = ["---"]
    for key, value in {**facts, "library_name": "lmforge"}.items():
        if isinstance(value, (list, tuple)):
            lines += [f"{key}:"] + [f"- {json.dumps(str(v))}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(str(value))}")
    return lines + ["---", ""]


def vectors_card_line(started: dict) -> str:
    """The model card's sentence on where `model.vectors` started the token embeddings from."""
    what = {"input": "the input embeddings of", "output": "the output embeddings (each token's text read alone) of",
            None: "the word vectors in"}[started.get("layer")]
    rest = "" if started["tokens"] == started["of"] else " (the rest drawn at random)"
    return (f"Its token embeddings started from pretrained vectors, {what} {started['source']}, for "
            f"{started['tokens']:,} of {started['of']:,} tokens{rest}, and were trained further.")


def model_card(model: nn.Module, tokenizer: Tokenizer, config: ModelConfig, info: dict) -> str:
    """A short model card: what the model is, what it was trained on, how it scored, what it is not for."""
    family = family_of(config.arch)
    if not family.transformer:  # the baselines (RNNs, TextCNN) describe themselves
        summary = f"{model.describe()}; made with lmforge {__version__}, "
    else:
        heads = f"{config.n_head} heads" if not config.layer_heads else f"{config.layer_heads} heads per layer (pruned)"
        widths = f", MLP widths {config.layer_intermediate} (pruned)" if config.layer_intermediate else ""
        summary = (f"A {family.card} made with lmforge {__version__}: {config.n_layer} layers, {heads}, "
                   f"{config.n_embd} dimensions{widths}, context {config.block_size} tokens, ")
    lines = [*card_front_matter(info), f"# {info.get('name', 'lmforge model')}", "",
             f"{summary}{count_parameters(model) / 1e6:.2f}M parameters; {tokenizer.kind} tokenizer, "
             f"{tokenizer.vocab_size} tokens.", ""]
    if info.get("vectors"):
        lines += [vectors_card_line(info["vectors"]), ""]
    kind = (info.get("classification") or {}).get("kind", "classify")
    if config.labels and kind == "regress":
        lines += [f"Regression head predicting '{config.labels[0]}' (a number).", ""]
    elif config.labels:
        what = "Multi-label head (a sigmoid per tag)" if kind == "multilabel" else "Classification head"
        lines += [f"{what} over {len(config.labels)} labels: {', '.join(config.labels)}.", ""]
    train = info.get("training", {})
    if train:
        lines += ["## Training", ""]
        lines += [f"- {key}: {value}" for key, value in train.items()]
        lines.append("")
    from .data.card import model_card_data_lines
    lines += model_card_data_lines(info)  # sources, scrub/dedup statistics, contamination: recorded facts only
    if info.get("compression"):
        from .compress import card_lines
        lines += card_lines(info["compression"])
    metrics = info.get("metrics", {})
    if metrics:
        lines += ["## Evaluation", ""]
        lines += [f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}" for key, value in metrics.items()]
        lines.append("")
    lines += ["## Intended use and limitations", "",
              "A small model for learning, experiments and domain-specific text. It reproduces patterns of its",
              "training data, including their errors and biases, and can state false things fluently. It is",
              "not suited to decisions about people, nor to facts that matter without checking. Outputs may",
              "repeat training text verbatim: do not train it on data you may not redistribute.", ""]
    return "\n".join(lines)
