"""Export the bi-encoder's embedding side in the sentence-transformers format.

Modules: Transformer (the encoder, truncating at the model's max_seq_length; a decoder's LoRA adapters merged
into it) -> Pooling (the model's mode, mean by default, the last token for a decoder) -> Dense(GELU) -> Dense(identity) -> Normalize, so `SentenceTransformer(out).encode(texts)`
gives the bi-encoder's projected (contrastive) embedding. The pair classifier and style features are not part
of it: sentence-transformers has no place for them. Nor has it windows: a text longer than max_seq_length is
truncated there, as by a bi-encoder with `long_texts: truncate` (ours reads such a text whole by default).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from bookmatch.errors import InputError
from bookmatch.storage import atomic_directory

log = logging.getLogger(__name__)

_ST_POOLING = {"mean": "mean", "cls": "cls", "max": "max", "last": "lasttoken"}


def _st_modules():
    try:  # sentence-transformers >= 6 moved the modules; older releases keep them in `models`
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:  # pragma: no cover - depends on the installed release
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    return Transformer, Pooling, Dense, Normalize


def export_sentence_transformers(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `model_dir`'s bi-encoder as a sentence-transformers folder at `out_dir` (atomically)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from bookmatch.inference import BI_ENCODER, detect_model_kind, load_bi_encoder

    if detect_model_kind(model_dir) != BI_ENCODER:
        raise InputError(f"{model_dir} is not a bi-encoder: only the bi-encoder has a sentence-transformers form")
    model = load_bi_encoder(model_dir, device="cpu")
    Transformer, Pooling, Dense, Normalize = _st_modules()
    hidden = model.config.hidden_size
    first, activation, second = model.projection
    if not isinstance(activation, torch.nn.GELU):
        raise InputError(f"{model_dir}: the projection head is not Linear-GELU-Linear; this exporter cannot express it")

    staging = Path(tempfile.mkdtemp(prefix="bookmatch-export-"))
    try:
        # The encoder alone, as a plain Hugging Face folder the Transformer module can load.
        # (a LoRA decoder: with its adapters merged, in fp32; its saved tokenizer appends the EOS it is pooled at)
        encoder = model.encoder.merge_and_unload() if model.is_lora else model.encoder
        if model.config.backbone_kind == "decoder":
            encoder = encoder.float()  # the base may be held in bf16
        encoder.save_pretrained(staging, safe_serialization=True)
        model.tokenizer.save_pretrained(staging)
        transformer = Transformer(str(staging), max_seq_length=model.config.max_seq_length)
        pooling = Pooling(hidden, pooling_mode=_ST_POOLING[model.config.pooling])
        dense_in = Dense(
            hidden,
            first.out_features,
            activation_function=torch.nn.GELU(),
            init_weight=first.weight.detach().clone(),
            init_bias=first.bias.detach().clone(),
        )
        dense_out = Dense(
            second.in_features,
            second.out_features,
            activation_function=torch.nn.Identity(),
            init_weight=second.weight.detach().clone(),
            init_bias=second.bias.detach().clone(),
        )
        st_model = SentenceTransformer(modules=[transformer, pooling, dense_in, dense_out, Normalize()], device="cpu")
        with atomic_directory(out_dir) as tmp:
            st_model.save(str(tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s to %s (sentence-transformers format)", model_dir, out_dir)
    return Path(out_dir)
