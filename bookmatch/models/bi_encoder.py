"""The Siamese bi-encoder: one shared encoder per side, a contrastive projection head, and a pair classifier.

A folder saved by `save_pretrained` holds `model.safetensors` (every weight: encoder, head, classifier),
`bookmatch_config.json` (BiEncoderConfig), the encoder's `config.json` and the tokenizer, so it loads
offline without the backbone it was trained from.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bookmatch.config import check_settings, setting
from bookmatch.errors import ModelLoadError, first_line
from bookmatch.models.decoder import (
    ADAPTER_FOLDER,
    adapter_source,
    append_eos,
    build_decoder,
    merged,
    resolve_backbone_kind,
    save_adapter,
)
from bookmatch.models.late_interaction import pad_tokens, symmetric_maxsim_matrix, symmetric_maxsim_pairs
from bookmatch.models.pooling import pool
from bookmatch.models.resolve import attention_dropout_override, check_tokenizer, resolve_model_path
from bookmatch.models.settings import ABSENT_FROM_OLD_FOLDERS, LONG_TEXT_MODES, BiEncoderSettings  # noqa: F401
from bookmatch.storage import atomic_directory, atomic_write_json
from bookmatch.text.lexical import LexicalFingerprint, signature_cosine
from bookmatch.text.style import get_side_feature_set

CONFIG_NAME = "bookmatch_config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
MODEL_TYPE = "bi_encoder"
# Fixed standardisation of the signature cosines (typical passage cosines lie in 0..0.5) and of the pooled
# embeddings' cosine (mean-pooled sentence encoders put most passage pairs in 0.2..0.8).
LEXICAL_COSINE_CENTER = 0.1
LEXICAL_COSINE_SCALE = 0.1
POOLED_COSINE_CENTER = 0.5
POOLED_COSINE_SCALE = 0.2
# the same for the symmetric MaxSim of two texts' token vectors (scoring: maxsim)
MAXSIM_CENTER = 0.5
MAXSIM_SCALE = 0.2


@dataclass
class BiEncoderConfig(BiEncoderSettings):
    """A built bi-encoder, as saved in `bookmatch_config.json`: its settings, its backbone and what the build
    filled in."""

    backbone: str = ""
    max_seq_length: int = setting(256, "Tokens per text the encoder reads (per window at inference).", ge=1)
    side_feature_names: list[str] = field(default_factory=list)  # filled from `side_features` on build
    classifier_hidden_dim: int = setting(512, "Hidden width of the pair classifier.", ge=1)
    dropout: float = setting(0.1, "Dropout in the pair classifier.", ge=0, le=1)
    hidden_size: int = 0  # the encoder's width, filled on build
    max_windows: int = setting(64, "Windows read per text at most (long_texts = windows).", ge=1)
    lora_merged: bool = False  # a decoder saved with its adapters folded into the weights (set by save_pretrained)

    def __post_init__(self) -> None:
        check_settings(self)
        self.side_feature_names = list(get_side_feature_set(self.side_features).names)


class TextEmbeddings(NamedTuple):
    pooled: torch.Tensor  # (N, hidden) for the pair classifier
    projected: torch.Tensor  # (N, projection_dim), L2-normalised, for the contrastive space
    style: torch.Tensor  # (N, n_side_features [+ 2 * lexical_top_k [+ 2 * name_top_k]]): style, then signatures
    # scoring: maxsim only: (N, L, projection_dim) L2-normalised token vectors, zero rows after a text's own
    tokens: torch.Tensor | None = None

    def take(self, index) -> TextEmbeddings:
        """The rows `index` (a slice, an index tensor or array) of every field."""
        return TextEmbeddings(*(None if t is None else t[index] for t in self))


class BiEncoder(nn.Module):
    def __init__(self, config: BiEncoderConfig, encoder: nn.Module, tokenizer) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.side_features = get_side_feature_set(config.side_features)
        # the encoder's own pooler (BERT/RoBERTa's CLS dense layer) is unused here: frozen, so DDP does not
        # wait for gradients that never come
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        hidden = int(encoder.config.hidden_size)
        config.hidden_size = hidden
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, config.projection_dim))
        self.n_style = n_side = self.side_features.dim
        self.lexical: LexicalFingerprint | None = None
        self.names: LexicalFingerprint | None = None
        if config.lexical_buckets > 0:
            self.lexical = LexicalFingerprint(config.lexical_buckets)
            # buffers, so the fitted IDFs travel inside model.safetensors
            self.register_buffer("lexical_idf", torch.ones(config.lexical_buckets))
            if config.name_top_k > 0:
                self.names = LexicalFingerprint(config.lexical_buckets, vocabulary="names")
                self.register_buffer("names_idf", torch.ones(config.lexical_buckets))
        self.late_interaction = config.scoring == "maxsim"
        n_scalars = (self.lexical is not None) + (self.names is not None) + bool(config.pooled_cosine)
        n_scalars += self.late_interaction
        self.classifier = nn.Sequential(
            nn.Linear(4 * hidden + 3 * n_side + n_scalars, config.classifier_hidden_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.classifier_hidden_dim, 2),
        )

    # construction and storage -----------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        backbone: str,
        local_files_only: bool = True,
        adapter: str | os.PathLike | None = None,
        attention_dropout: float | None = None,
        **config_values,
    ) -> BiEncoder:
        """A new bi-encoder on a pretrained encoder (heads randomly initialised from the torch seed).

        A decoder backbone (`backbone_kind`, or detected from its config) gets a frozen base and LoRA adapters;
        `adapter` continues from a saved adapter instead (a decoder bi-encoder folder: its heads too).
        `attention_dropout` replaces an encoder's dropout on attention probabilities (None: keep its own)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve_model_path(backbone, local_files_only=local_files_only)
        config = BiEncoderConfig(backbone=str(backbone), **config_values)
        heads = None
        try:
            hf_config = AutoConfig.from_pretrained(path, local_files_only=local_files_only)
            config.backbone_kind = resolve_backbone_kind(config.backbone_kind, hf_config)
            if config.backbone_kind == "decoder":
                config.pooling = "last"
                adapter_dir, heads = adapter_source(adapter) if adapter else (None, None)
                encoder = build_decoder(path, config, local_files_only, adapter_dir)
            else:
                # float32 whatever the checkpoint's config says: the optimizer needs fp32 weights; bf16 from autocast
                encoder = AutoModel.from_pretrained(
                    path,
                    local_files_only=local_files_only,
                    dtype=torch.float32,
                    **attention_dropout_override(hf_config, attention_dropout),
                )
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load backbone {backbone!r} from {path}: {first_line(err)}") from err
        if adapter and config.backbone_kind != "decoder":
            raise ModelLoadError(f"an adapter ({adapter}) needs a decoder backbone; {backbone!r} is an encoder")
        check_tokenizer(tokenizer, encoder.config, path)
        if config.backbone_kind == "decoder":
            append_eos(tokenizer, path)
        model = cls(config, encoder, tokenizer)
        if heads is not None:
            model._load_heads(heads)
        return model

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, device: str | torch.device | None = None) -> BiEncoder:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        model_dir = Path(model_dir)
        config_path = model_dir / CONFIG_NAME
        if not config_path.exists():
            raise ModelLoadError(
                f"{model_dir} has no {CONFIG_NAME}: pass a folder written by BiEncoder.save_pretrained"
            )
        try:
            values = json.loads(config_path.read_text(encoding="utf-8"))
            values.pop("model_type", None)
            known = {f.name for f in dataclasses.fields(BiEncoderConfig)}
            config = BiEncoderConfig(**ABSENT_FROM_OLD_FOLDERS | {k: v for k, v in values.items() if k in known})
            hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
            config.backbone_kind = resolve_backbone_kind(config.backbone_kind, hf_config)
            adapter_only = config.backbone_kind == "decoder" and not config.lora_merged
            if adapter_only:  # the frozen base from its backbone, the adapter from this folder
                base = resolve_model_path(config.backbone)
                encoder = build_decoder(base, config, adapter=model_dir / ADAPTER_FOLDER, trainable=False)
            elif config.backbone_kind == "decoder":
                encoder = AutoModel.from_config(hf_config, dtype=getattr(torch, config.base_dtype))
            else:
                encoder = AutoModel.from_config(hf_config)
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError, TypeError, json.JSONDecodeError) as err:
            raise ModelLoadError(
                f"cannot read the bi-encoder in {model_dir}: {first_line(err)}; re-save it with save_pretrained"
            ) from err
        check_tokenizer(tokenizer, encoder.config, model_dir)
        if config.backbone_kind == "decoder":
            append_eos(tokenizer, model_dir)
        model = cls(config, encoder, tokenizer)
        if adapter_only:
            model._load_heads(model_dir)
        else:
            try:
                model.load_state_dict(load_weights(model_dir), strict=True)
            except RuntimeError as err:  # shapes or names do not match the config beside them
                raise ModelLoadError(
                    f"weights in {model_dir} do not match its {CONFIG_NAME}: {first_line(err)}"
                ) from err
        model.sync_lexical()
        model.eval()
        if device is not None:
            model.to(device)
        return model

    def save_pretrained(
        self, model_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None, merge: bool = False
    ) -> Path:
        """Write the whole model folder atomically (a kill mid-save leaves the previous folder intact).

        `state_dict` replaces this module's own weights (e.g. the gathered weights of a DeepSpeed ZeRO-3 run).
        A decoder with LoRA adapters saves its heads and its adapter (`adapter/`), or with `merge` the whole
        model with the adapters folded in (a folder that loads without PEFT or the base).
        """
        from safetensors.torch import save_file, save_model

        with atomic_directory(model_dir) as tmp:
            saved = self
            if self.is_lora and merge:
                saved = copy.deepcopy(self)
                if state_dict is not None:
                    saved.load_state_dict(state_dict)
                saved.encoder, state_dict = merged(saved.encoder), None
                saved.config.lora_merged = True
            if saved.is_lora:
                self._save_lora(tmp, state_dict)
            elif state_dict is None:
                save_model(saved, str(tmp / WEIGHTS_NAME))
            else:
                save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp / WEIGHTS_NAME))
            atomic_write_json(tmp / CONFIG_NAME, {"model_type": MODEL_TYPE, **dataclasses.asdict(saved.config)})
            self.encoder.config.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        return Path(model_dir)

    @property
    def is_lora(self) -> bool:
        """A decoder whose encoder carries (unmerged) LoRA adapters."""
        return self.config.backbone_kind == "decoder" and not self.config.lora_merged

    def _save_lora(self, folder: Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        """The heads (every weight outside the encoder) in model.safetensors, the adapter in adapter/."""
        from safetensors.torch import save_file

        weights = self.state_dict() if state_dict is None else state_dict
        heads = {k: v.detach().contiguous().cpu() for k, v in weights.items() if not k.startswith("encoder.")}
        save_file(heads, str(folder / WEIGHTS_NAME))
        encoder_weights = None
        if state_dict is not None:
            encoder_weights = {k[len("encoder.") :]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        save_adapter(self.encoder, folder / ADAPTER_FOLDER, encoder_weights)

    def _load_heads(self, model_dir: Path) -> None:
        """Every weight outside the encoder from `model_dir`'s model.safetensors (a LoRA decoder's folder)."""
        try:
            missing, unexpected = self.load_state_dict(load_weights(Path(model_dir)), strict=False)
        except RuntimeError as err:  # shapes do not match the config
            raise ModelLoadError(f"the heads in {model_dir} do not match this model: {first_line(err)}") from err
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ModelLoadError(
                f"the heads in {model_dir} do not match this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    # tokenizing ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, list[list[int]]]:
        """Token ids without padding (padding happens per batch)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.config.max_seq_length)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def window_inputs(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Model inputs (token ids with special tokens) for `texts`, and the text each input belongs to.

        "truncate": one input per text, its first max_seq_length tokens. "windows": consecutive,
        non-overlapping windows covering the text (at most `max_windows`), each a complete model input.
        """
        texts = list(texts)
        if self.config.long_texts == "truncate":
            return self.tokenize(texts)["input_ids"], list(range(len(texts)))
        prefix, suffix = self.special_affixes()
        width = self.config.max_seq_length - len(prefix) - len(suffix)
        if width < 1:
            raise ValueError(
                f"max_seq_length {self.config.max_seq_length} leaves no room for text between the special tokens"
            )
        pieces = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        inputs, owners = [], []
        for owner, ids in enumerate(pieces):
            starts = range(0, max(len(ids), 1), width)[: self.config.max_windows]
            for start in starts:
                inputs.append(prefix + ids[start : start + width] + suffix)
                owners.append(owner)
        return inputs, owners

    def sampled_window_inputs(self, texts: Sequence[str], seeds: Sequence[Sequence[int]]) -> list[list[int]]:
        """One model input per text: max_seq_length tokens from an offset drawn from that text's seed (uniform
        over the offsets that keep the window inside the text; 0 for a text that fits)."""
        prefix, suffix = self.special_affixes()
        width = self.config.max_seq_length - len(prefix) - len(suffix)
        pieces = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        inputs = []
        for ids, seed in zip(pieces, seeds):
            start = int(np.random.default_rng(list(seed)).integers(max(len(ids) - width, 0) + 1))
            inputs.append(prefix + ids[start : start + width] + suffix)
        return inputs

    def text_token_limit(self) -> int:
        """How many tokens of a text (special tokens included) the model reads at inference."""
        if self.config.long_texts == "truncate":
            return self.config.max_seq_length
        special = sum(map(len, self.special_affixes()))
        return (self.config.max_seq_length - special) * self.config.max_windows + special

    def special_affixes(self) -> tuple[list[int], list[int]]:
        """The special tokens the tokenizer puts before and after one text ([CLS] / [SEP], <s> / </s>...)."""
        plain = self.tokenizer("word", add_special_tokens=False)["input_ids"]
        full = self.tokenizer("word")["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
        raise ValueError("cannot locate the text between the tokenizer's special tokens")

    def side_feature_array(self, texts: Sequence[str]) -> np.ndarray:
        style = self.side_features.batch(list(texts))
        if self.lexical is None:
            return style
        texts = list(texts)
        parts = [
            style.astype(np.float32).reshape(len(texts), -1),
            self.lexical.signatures(texts, self.config.lexical_top_k),
        ]
        if self.names is not None:
            parts.append(self.names.signatures(texts, self.config.name_top_k))
        return np.concatenate(parts, axis=1)

    def signature_widths(self) -> list[int]:
        """Widths of the signatures after the style features in a text's `style` row, in order (lexical, then
        names; absent ones left out): each is K bucket ids then their K weights."""
        widths = [2 * self.config.lexical_top_k] if self.lexical is not None else []
        return widths + ([2 * self.config.name_top_k] if self.names is not None else [])

    @property
    def style_width(self) -> int:
        """Columns of `TextEmbeddings.style`: the style features, then the signatures."""
        return self.n_style + sum(self.signature_widths())

    def lexical_fingerprints(self):
        """(fingerprinter, its IDF buffer) for each lexical signature the model uses."""
        if self.lexical is not None:
            yield self.lexical, self.lexical_idf
        if self.names is not None:
            yield self.names, self.names_idf

    def fit_lexical(self, texts) -> None:
        """Fit the signatures' IDF on training texts (before the splits are featurised)."""
        texts = list(texts)
        for fingerprint, idf in self.lexical_fingerprints():
            fingerprint.fit(texts)
            idf.copy_(torch.from_numpy(fingerprint.idf))

    def sync_lexical(self) -> None:
        """Point the fingerprinters at the IDF buffers (after loading weights)."""
        for fingerprint, idf in self.lexical_fingerprints():
            fingerprint.idf = idf.detach().float().cpu().numpy()

    # forward ---------------------------------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids -> (pooled, projected) for one side."""
        pooled, projected, _ = self.encode_with_tokens(input_ids, attention_mask)
        return pooled, projected

    def encode_with_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Token ids -> (pooled, projected, tokens); tokens (scoring: maxsim, else None) are the projection head
        applied to every token, L2-normalised, zero at padding."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool(hidden, attention_mask, self.config.pooling)
        if self.config.backbone_kind == "decoder":
            pooled = pooled.float()  # a bf16 base's states; the heads are fp32 (autocast still runs them in bf16)
        projected = nn.functional.normalize(self.projection(pooled), dim=-1)
        tokens = None
        if self.late_interaction:
            tokens = nn.functional.normalize(self.projection(hidden), dim=-1)
            tokens = tokens * attention_mask[..., None].to(tokens.dtype)
        return pooled, projected, tokens

    def classify(self, pooled_a, pooled_b, style_a, style_b, tokens_a=None, tokens_b=None) -> torch.Tensor:
        # split before any cast: bucket ids in the signatures are not exact in bf16
        signatures_a, signatures_b = style_a[..., self.n_style :].float(), style_b[..., self.n_style :].float()
        style_a = style_a[..., : self.n_style].to(pooled_a.dtype)
        style_b = style_b[..., : self.n_style].to(pooled_a.dtype)
        features = [
            pooled_a,
            pooled_b,
            (pooled_a - pooled_b).abs(),
            pooled_a * pooled_b,
            style_a,
            style_b,
            (style_a - style_b).abs(),
        ]
        scalars = []
        offset = 0
        for width in self.signature_widths():
            cosine = signature_cosine(
                signatures_a[..., offset : offset + width], signatures_b[..., offset : offset + width]
            )
            scalars.append((cosine - LEXICAL_COSINE_CENTER) / LEXICAL_COSINE_SCALE)
            offset += width
        if self.config.pooled_cosine:
            cosine = nn.functional.cosine_similarity(pooled_a.float(), pooled_b.float(), dim=-1)
            scalars.append((cosine - POOLED_COSINE_CENTER) / POOLED_COSINE_SCALE)
        if self.late_interaction:
            if tokens_a is None or tokens_b is None:
                raise ValueError("a bi-encoder with scoring: maxsim needs both texts' token vectors")
            scalars.append((symmetric_maxsim_pairs(tokens_a, tokens_b) - MAXSIM_CENTER) / MAXSIM_SCALE)
        features += [scalar.unsqueeze(-1).to(pooled_a.dtype) for scalar in scalars]
        return self.classifier(torch.cat(features, dim=-1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training forward over a pair batch (`input_ids_a/attention_mask_a/style_a` and the same for `_b`)."""
        pooled_a, projected_a, tokens_a = self.encode_with_tokens(batch["input_ids_a"], batch["attention_mask_a"])
        pooled_b, projected_b, tokens_b = self.encode_with_tokens(batch["input_ids_b"], batch["attention_mask_b"])
        logits = self.classify(pooled_a, pooled_b, batch["style_a"], batch["style_b"], tokens_a, tokens_b)
        out = {
            "pooled_a": pooled_a,
            "pooled_b": pooled_b,
            "projected_a": projected_a,
            "projected_b": projected_b,
            "logits": logits,
        }
        if tokens_a is not None:
            out.update(tokens_a=tokens_a, tokens_b=tokens_b)
        return out

    # inference -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 32) -> TextEmbeddings:
        """Embeddings for many texts (eval mode, no grad), on the CPU in the input order.

        A text longer than max_seq_length is read per `long_texts`: with "windows", its pooled vector is the
        token-weighted mean of its windows' pooled vectors (for mean pooling, the mean over all its tokens),
        and the projection is taken of that mean. Inputs run longest first so each batch pads to similar lengths.
        """
        texts = list(texts)
        was_training = self.training
        self.eval()
        device = self.device
        inputs, owners = self.window_inputs(texts)
        style = torch.from_numpy(self.side_feature_array(texts))
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        pooled_sum = torch.zeros(len(texts), self.config.hidden_size, dtype=torch.float64)
        weight = torch.zeros(len(texts), dtype=torch.float64)
        window_tokens: list[torch.Tensor | None] = [None] * len(inputs)  # scoring: maxsim
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                padded = self.tokenizer.pad({"input_ids": [inputs[i] for i in idx]}, return_tensors="pt")
                mask = padded["attention_mask"]
                pooled, _, vectors = self.encode_with_tokens(padded["input_ids"].to(device), mask.to(device))
                if vectors is not None:
                    for row, i in enumerate(idx):
                        window_tokens[i] = vectors[row, : int(mask[row].sum())].float().cpu()
                tokens = mask.sum(dim=1).double()
                text_index = torch.tensor([owners[i] for i in idx])
                pooled_sum.index_add_(0, text_index, pooled.double().cpu() * tokens[:, None])
                weight.index_add_(0, text_index, tokens)
            pooled_out = (pooled_sum / weight.clamp_min(1.0)[:, None]).float()
            projected_out = torch.empty(len(texts), self.config.projection_dim)
            head_dtype = next(self.projection.parameters()).dtype
            for start in range(0, len(texts), 4096):
                block = pooled_out[start : start + 4096].to(device=device, dtype=head_dtype)
                projected_out[start : start + 4096] = (
                    nn.functional.normalize(self.projection(block), dim=-1).float().cpu()
                )
        finally:
            self.train(was_training)
        return TextEmbeddings(pooled_out, projected_out, style, self._text_tokens(window_tokens, owners, len(texts)))

    def _text_tokens(self, window_tokens: list, owners: list[int], count: int) -> torch.Tensor | None:
        """Each text's token vectors, its windows' in order (scoring: maxsim), padded to (count, L, d)."""
        if not self.late_interaction:
            return None
        per_text: list[list[torch.Tensor]] = [[] for _ in range(count)]
        for vectors, owner in zip(window_tokens, owners):
            per_text[owner].append(vectors)
        dim = self.config.projection_dim
        return pad_tokens([torch.cat(parts) if parts else torch.zeros(0, dim) for parts in per_text], dim)

    @torch.no_grad()
    def pair_logits(self, emb_a: TextEmbeddings, emb_b: TextEmbeddings, batch_size: int = 4096) -> torch.Tensor:
        """(N, 2) logits for aligned rows of two embedding sets (class 1 = same book), on the CPU."""
        was_training = self.training
        self.eval()
        device = self.device
        dtype = next(self.classifier.parameters()).dtype
        out = []
        try:
            for start in range(0, emb_a.pooled.shape[0], batch_size):
                sl = slice(start, start + batch_size)
                tokens_a = None if emb_a.tokens is None else emb_a.tokens[sl].to(device)
                tokens_b = None if emb_b.tokens is None else emb_b.tokens[sl].to(device)
                logits = self.classify(
                    emb_a.pooled[sl].to(device, dtype),
                    emb_b.pooled[sl].to(device, dtype),
                    emb_a.style[sl].to(device, torch.float32),
                    emb_b.style[sl].to(device, torch.float32),
                    tokens_a,
                    tokens_b,
                )
                out.append(logits.float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, 2)

    @torch.no_grad()
    def margins_against(self, texts: TextEmbeddings, others: TextEmbeddings, max_rows: int = 32768) -> torch.Tensor:
        """(T, C) margins l1 - l0 of every text (first side) against every one of `others` (second side), on the CPU.

        Equal to `pair_logits` over the T*C pairs (tests hold it to that) but without building their feature
        rows: the classifier's first layer is split by input block, so each side's own blocks are multiplied
        once per text instead of once per pair, and the signature cosines are products of dense bucket vectors
        instead of a K x K comparison per pair. With it a 256-text score cohort costs MiniLM batch scoring nothing
        measurable (BENCHMARKS.md; scoring every text x cohort pair through the classifier had cost ~12%).
        """
        was_training = self.training
        self.eval()
        first, activation, last = self.classifier[0], self.classifier[1], self.classifier[3]
        device, dtype = first.weight.device, first.weight.dtype
        hidden, n_style = self.config.hidden_size, self.n_style
        blocks = torch.split(
            first.weight, [hidden] * 4 + [n_style] * 3 + [first.weight.shape[1] - 4 * hidden - 3 * n_style], dim=1
        )
        w_u, w_v, w_diff, w_prod, w_style_a, w_style_b, w_style_diff, w_scalars = blocks
        u, c = texts.pooled.to(device, dtype), others.pooled.to(device, dtype)
        style_u, style_c = texts.style.to(device, torch.float32), others.style.to(device, torch.float32)
        s_u, s_c = style_u[:, :n_style].to(dtype), style_c[:, :n_style].to(dtype)
        own_u = u @ w_u.T + s_u @ w_style_a.T + first.bias  # (T, out)
        own_c = c @ w_v.T + s_c @ w_style_b.T  # (C, out)
        scalars = []  # each (T, C), in classify's order
        offset = n_style
        for width in self.signature_widths():
            dense_u = _dense_signatures(style_u[:, offset : offset + width], self.config.lexical_buckets)
            dense_c = _dense_signatures(style_c[:, offset : offset + width], self.config.lexical_buckets)
            scalars.append((dense_u @ dense_c.T - LEXICAL_COSINE_CENTER) / LEXICAL_COSINE_SCALE)
            offset += width
        if self.config.pooled_cosine:
            cosine = nn.functional.normalize(u.float(), dim=-1) @ nn.functional.normalize(c.float(), dim=-1).T
            scalars.append((cosine - POOLED_COSINE_CENTER) / POOLED_COSINE_SCALE)
        if self.late_interaction:
            if texts.tokens is None or others.tokens is None:
                raise ValueError("a bi-encoder with scoring: maxsim needs the token vectors of both sets")
            maxsim = symmetric_maxsim_matrix(texts.tokens.to(device), others.tokens.to(device))
            scalars.append((maxsim - MAXSIM_CENTER) / MAXSIM_SCALE)
        margins = torch.empty(u.shape[0], c.shape[0])
        per_block = max(1, max_rows // max(c.shape[0], 1))
        try:
            for start in range(0, u.shape[0], per_block):
                rows = slice(start, start + per_block)
                ub, sb = u[rows, None, :], s_u[rows, None, :]
                h = own_u[rows, None, :] + own_c[None] + (ub - c[None]).abs() @ w_diff.T + (ub * c[None]) @ w_prod.T
                h = h + (sb - s_c[None]).abs() @ w_style_diff.T
                if scalars:
                    h = h + torch.stack([scalar[rows] for scalar in scalars], dim=-1).to(dtype) @ w_scalars.T
                logits = last(activation(h)).float()
                margins[rows] = (logits[..., 1] - logits[..., 0]).cpu()
        finally:
            self.train(was_training)
        return margins


def _dense_signatures(signatures: torch.Tensor, buckets: int) -> torch.Tensor:
    """(N, 2K) signatures (K bucket ids, then their K weights; id < 0 = empty) -> (N, buckets) weights, so that
    the dot product of two rows is `signature_cosine` of the two signatures."""
    top_k = signatures.shape[-1] // 2
    ids, weights = signatures[:, :top_k], signatures[:, top_k:]
    used = ids >= 0
    dense = torch.zeros(signatures.shape[0], buckets, dtype=torch.float32, device=signatures.device)
    return dense.scatter_add_(1, torch.where(used, ids, 0).long(), torch.where(used, weights, 0.0).float())


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict from model.safetensors, else pytorch_model.bin (tensors only, never pickled code)."""
    safetensors_path = model_dir / WEIGHTS_NAME
    legacy_path = model_dir / LEGACY_WEIGHTS_NAME
    try:
        if safetensors_path.exists():
            from safetensors.torch import load_file

            return load_file(str(safetensors_path))
        if legacy_path.exists():
            return torch.load(legacy_path, map_location="cpu", weights_only=True)
    except Exception as err:  # any decode failure is the same problem for the user: a damaged file
        path = safetensors_path if safetensors_path.exists() else legacy_path
        raise ModelLoadError(
            f"cannot read weights {path}: {type(err).__name__}: {err}; the file is damaged, re-save or re-train the model"
        ) from err
    raise ModelLoadError(
        f"{model_dir} has neither {WEIGHTS_NAME} nor {LEGACY_WEIGHTS_NAME}: pass a folder written by save_pretrained"
    )
