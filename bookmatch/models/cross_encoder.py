"""The cross-encoder teacher: both passages in one sequence through a 2-label sequence classifier."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bookmatch.errors import ModelLoadError, first_line
from bookmatch.models.pair_tokens import tokenize_pairs
from bookmatch.models.resolve import attention_dropout_override, check_tokenizer, resolve_model_path
from bookmatch.storage import atomic_directory, atomic_write_json

CONFIG_NAME = "bookmatch_config.json"
MODEL_TYPE = "cross_encoder"


@dataclass
class CrossEncoderConfig:
    backbone: str
    max_seq_length: int = 512
    num_labels: int = 2


class CrossEncoder:
    """Holds the Hugging Face model (`.model`) and tokenizer; class 1 of the logits means 'same book'."""

    def __init__(self, config: CrossEncoderConfig, model, tokenizer) -> None:
        self.config = config
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_backbone(
        cls,
        backbone: str,
        max_seq_length: int = 512,
        local_files_only: bool = True,
        attention_dropout: float | None = None,
    ) -> CrossEncoder:
        """A new cross-encoder on a pretrained encoder (the classification head is newly initialised);
        `attention_dropout` replaces the encoder's dropout on attention probabilities (None: keep its own)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model_path(backbone, local_files_only=local_files_only)
        try:
            hf_config = AutoConfig.from_pretrained(path, local_files_only=local_files_only)
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=2,
                local_files_only=local_files_only,
                dtype=torch.float32,
                **attention_dropout_override(hf_config, attention_dropout),
            )
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load backbone {backbone!r} from {path}: {first_line(err)}") from err
        check_tokenizer(tokenizer, model.config, path)
        return cls(CrossEncoderConfig(backbone=str(backbone), max_seq_length=max_seq_length), model, tokenizer)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, device: str | torch.device | None = None) -> CrossEncoder:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        config_path = model_dir / CONFIG_NAME
        if not config_path.exists():
            raise ModelLoadError(
                f"{model_dir} has no {CONFIG_NAME}: pass a folder written by CrossEncoder.save_pretrained"
            )
        try:
            values = json.loads(config_path.read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(CrossEncoderConfig)}
            config = CrossEncoderConfig(**{k: v for k, v in values.items() if k in known})
            # float32 even when config.json names the bf16 a DeepSpeed run trained under (the saved weights are fp32)
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, local_files_only=True, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception as err:  # transformers raises many types for a damaged folder; all mean the same here
            raise ModelLoadError(
                f"cannot load the cross-encoder in {model_dir}: {first_line(err)}; re-save or re-train it"
            ) from err
        check_tokenizer(tokenizer, model.config, model_dir)
        model.eval()
        if device is not None:
            model.to(device)
        return cls(config, model, tokenizer)

    def save_pretrained(self, model_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Hugging Face folder + bookmatch_config.json, atomically; `state_dict` replaces the model's own weights."""
        with atomic_directory(model_dir) as tmp:
            self.model.save_pretrained(tmp, state_dict=state_dict)
            self.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / CONFIG_NAME, {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config)})
        return Path(model_dir)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize_pairs(
        self, texts1: Sequence[str], texts2: Sequence[str], tokenizer=None
    ) -> dict[str, list[list[int]]]:
        """Unpadded token ids of each pair, as the tokenizer's own pair encoding gives them ('longest_first' trims
        the longer passage first), each distinct text tokenized once (`pair_tokens`). `tokenizer`: a copy of this
        model's tokenizer, for a thread of its own (a fast tokenizer's settings are not safe to share)."""
        return tokenize_pairs(tokenizer or self.tokenizer, texts1, texts2, self.config.max_seq_length)

    @torch.no_grad()
    def predict_logits(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> torch.Tensor:
        """(N, 2) float32 logits on the CPU, in input order; pairs run longest first to pad little."""
        pairs = list(pairs)
        if not pairs:
            return torch.zeros(0, 2)
        was_training = self.model.training
        self.model.eval()
        device = self.device
        tokens = self.tokenize_pairs([a for a, _ in pairs], [b for _, b in pairs])
        order = sorted(range(len(pairs)), key=lambda i: -len(tokens["input_ids"][i]))
        out = torch.zeros(len(pairs), 2)
        try:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                padded = self.tokenizer.pad({k: [v[i] for i in idx] for k, v in tokens.items()}, return_tensors="pt")
                logits = self.model(**{k: v.to(device) for k, v in padded.items()}).logits
                out[torch.tensor(idx)] = logits.float().cpu()
        finally:
            self.model.train(was_training)
        return out
