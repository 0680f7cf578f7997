"""What each training program trains: its module (model + training-only heads, losses computed in forward),
its data (tokenisation, collator), how its servable model is saved, and the teacher's logits for distillation."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bookmatch.config import section_values
from bookmatch.models.bi_encoder import BiEncoder
from bookmatch.models.cross_encoder import CrossEncoder
from bookmatch.models.settings import BiEncoderSettings
from bookmatch.training.config import TrainConfig
from bookmatch.training.data import label_index, texts_fingerprint, topic_ids, topic_index, work_ids
from bookmatch.training.features import (
    PairArrays,
    arrays_key,
    bi_encoder_arrays,
    cache_folder,
    cached_arrays,
    cross_arrays,
    cross_arrays_key,
    fit_lexical_cached,
    tokenizer_fingerprint,
)
from bookmatch.training.losses import (
    LossLog,
    MaxSimSupConLoss,
    SupConLoss,
    TopicAdversary,
    combine_losses,
    distillation_loss,
    independence_loss,
    pair_ce_loss,
)
from bookmatch.training.teacher_logits import teacher_logits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the bi-encoder's loss terms (a weight of 0 leaves its term out of the total)."""

    ce: float = 1.0
    contrastive: float = 0.2
    distill: float = 0.5
    topic_adversary: float = 0.1
    independence: float = 0.0

    def by_term(self) -> dict[str, float]:
        return {
            "ce_loss": self.ce,
            "contrastive_loss": self.contrastive,
            "distill_loss": self.distill,
            "topic_adv_loss": self.topic_adversary,
            "independence_loss": self.independence,
        }


class ContrastiveModule(nn.Module):
    """The bi-encoder plus the training-only parts (topic adversary); forward returns the loss terms.

    The losses are computed inside forward so that DDP / DeepSpeed see every trainable parameter used there.
    `num_topics` > 0 adds the topic adversary (gradient reversal scaled by `adversary_lambda`).
    """

    def __init__(
        self,
        bi_encoder: BiEncoder,
        weights: LossWeights,
        temperature: float = 0.05,
        distill_temperature: float = 2.0,
        num_topics: int = 0,
        adversary_lambda: float = 0.1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.bi_encoder = bi_encoder
        self.weights = weights
        self.distill_temperature = distill_temperature
        if bi_encoder.late_interaction:
            # ranks gather token matrices of one shape: pad to the longest a batch can have
            length = bi_encoder.config.max_seq_length if world_size > 1 else 0
            self.supcon = MaxSimSupConLoss(temperature, rank=rank, world_size=world_size, max_length=length)
        else:
            self.supcon = SupConLoss(temperature, rank=rank, world_size=world_size)
        hidden = bi_encoder.config.hidden_size
        self.topic_adversary = TopicAdversary(hidden, num_topics, lambda_=adversary_lambda) if num_topics > 0 else None

    def forward(self, batch: dict[str, torch.Tensor], with_losses: bool = True) -> dict[str, torch.Tensor]:
        out = self.bi_encoder(batch)
        if not with_losses:
            return {"logits": out["logits"]}
        weights = self.weights
        terms: dict[str, torch.Tensor] = {}
        terms.update(pair_ce_loss(out["logits"], batch["label"]))
        if weights.contrastive > 0:
            if self.bi_encoder.late_interaction:
                projected = _stack_tokens(out["tokens_a"], out["tokens_b"])
            else:
                projected = torch.cat([out["projected_a"], out["projected_b"]])
            terms.update(self.supcon(projected, torch.cat([batch["work_a"], batch["work_b"]])))
        if "teacher_logits" in batch and weights.distill > 0:
            terms.update(distillation_loss(out["logits"], batch["teacher_logits"], self.distill_temperature))
        pooled = topics = None
        if self.topic_adversary is not None or weights.independence > 0:
            pooled = torch.cat([out["pooled_a"], out["pooled_b"]])
            topics = torch.cat([batch["topic_a"], batch["topic_b"]])
        if self.topic_adversary is not None:
            terms.update(self.topic_adversary(pooled, topics))
        if weights.independence > 0:
            terms.update(independence_loss(pooled, topics))
        total, logged = combine_losses(terms, weights.by_term())
        return {"logits": out["logits"], "loss": total, "logged": logged}


def cached_contrastive_step(module: ContrastiveModule, batch: dict[str, torch.Tensor], cached, accelerator) -> LossLog:
    """One GradCache step of the bi-encoder loss: the full batch's SupCon at one mini-batch's memory.

    Both sides are stacked (rows [0, B) are text1, [B, 2B) text2) and padded to one length; every other
    term is computed on the full batch from the cached embeddings (`gradcache.CachedSupCon`). Leaves the
    gradients in `.grad`; the caller clips and steps.
    """
    bi_encoder, weights = module.bi_encoder, module.weights
    size = batch["label"].shape[0]
    length = max(batch["input_ids_a"].shape[1], batch["input_ids_b"].shape[1])
    pad_id = bi_encoder.tokenizer.pad_token_id or 0

    def padded(name: str, side: str, value: int) -> torch.Tensor:
        tensor = batch[f"{name}_{side}"]
        return nn.functional.pad(tensor, (0, length - tensor.shape[1]), value=value)

    inputs = {
        "input_ids": torch.cat([padded("input_ids", "a", pad_id), padded("input_ids", "b", pad_id)]),
        "attention_mask": torch.cat([padded("attention_mask", "a", 0), padded("attention_mask", "b", 0)]),
    }

    def embed(mini: dict[str, torch.Tensor]):
        with accelerator.autocast():
            pooled, projected, tokens = bi_encoder.encode_with_tokens(mini["input_ids"], mini["attention_mask"])
        # SupCon sees the first output: the token matrices under late interaction
        return (projected, pooled) if tokens is None else (tokens, pooled)

    def pair_terms(outputs) -> dict[str, torch.Tensor]:
        first, pooled = outputs
        tokens_a, tokens_b = (first[:size], first[size:]) if bi_encoder.late_interaction else (None, None)
        with accelerator.autocast():
            logits = bi_encoder.classify(
                pooled[:size], pooled[size:], batch["style_a"], batch["style_b"], tokens_a, tokens_b
            )
        terms = dict(pair_ce_loss(logits, batch["label"]))
        if "teacher_logits" in batch and weights.distill > 0:
            terms.update(distillation_loss(logits, batch["teacher_logits"], module.distill_temperature))
        topics = torch.cat([batch["topic_a"], batch["topic_b"]])
        if module.topic_adversary is not None:
            terms.update(module.topic_adversary(pooled, topics))
        if weights.independence > 0:
            terms.update(independence_loss(pooled, topics))
        return terms

    total, terms = cached.step_with_terms(
        embed,
        inputs,
        torch.cat([batch["work_a"], batch["work_b"]]),
        pair_terms,
        weights=weights.by_term(),
    )
    return LossLog({**terms, "loss": total})


class CrossModule(nn.Module):
    def __init__(self, cross_encoder: CrossEncoder) -> None:
        super().__init__()
        self.model = cross_encoder.model

    def forward(self, batch: dict[str, torch.Tensor], with_losses: bool = True) -> dict[str, Any]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        logits = self.model(**inputs).logits
        if not with_losses:
            return {"logits": logits}
        total, logged = combine_losses(pair_ce_loss(logits, batch["label"]))
        return {"logits": logits, "loss": total, "logged": logged}


class Task:
    """One training program: the loop in `trainer.run_training` calls these and knows nothing of the model."""

    name = ""
    sequences_per_pair = 1

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._fingerprints: dict[int, tuple[Any, str]] = {}  # id(split) -> (split, fingerprint): kept alive

    def fingerprint(self, split) -> str:
        """`data.texts_fingerprint` of a split, once per split: it reads every text (~50,000 pairs/s), and the
        lexical IDFs, the arrays and the teacher's logits are all keyed by it."""
        entry = self._fingerprints.get(id(split))
        if entry is None:
            entry = self._fingerprints[id(split)] = (split, texts_fingerprint(split))
        return entry[1]

    def build(self, data, rank: int, world_size: int) -> nn.Module:
        raise NotImplementedError

    def arrays(self, split, data_dir: Path, out: Path, train: bool = False, write: bool = True) -> PairArrays:
        """The split's model inputs (features.PairArrays), from the features cache when an earlier run on this
        data left them; `write`: store them there when computed (one process writes)."""
        raise NotImplementedError

    def save_final(self, module: nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Save the servable model; `state_dict` (keys of the training module) is given under DeepSpeed."""
        raise NotImplementedError

    def add_teacher_logits(self, train_split, tokenized, accelerator, cache: Path):
        """Add the teacher's logits (a distilling task), from the cache folder `cache` where an earlier run
        left them."""
        return tokenized

    def batch_groups(self, train_split) -> tuple[list[int], int] | None:
        """A group id per training pair and the groups per (per-process) batch; None: batches at random."""
        return None


class CrossTask(Task):
    name = "cross"

    def build(self, data, rank, world_size):
        cfg = self.config
        self.cross = CrossEncoder.from_backbone(
            cfg.model,
            max_seq_length=cfg.max_seq_length,
            local_files_only=cfg.local_files_only,
            attention_dropout=cfg.attention_dropout,
        )
        if cfg.gradient_checkpointing:
            self.cross.model.gradient_checkpointing_enable()
        return CrossModule(self.cross)

    def arrays(self, split, data_dir, out, train=False, write=True):
        key = cross_arrays_key(self.fingerprint(split), self.cross)
        texts_a, texts_b = list(split["text1"]), list(split["text2"])
        arrays = cached_arrays(
            cache_folder(data_dir, out),
            key,
            write=write,
            build=lambda: cross_arrays(texts_a, texts_b, self.cross, self.config.preprocess_workers),
        )
        return _with_pair_columns(arrays, split)

    def save_final(self, module, path, state_dict=None):
        weights = None if state_dict is None else _strip_prefix(state_dict, "model.")
        CrossEncoder(self.cross.config, module.model, self.cross.tokenizer).save_pretrained(path, state_dict=weights)


class ContrastiveTask(Task):
    name = "contrastive"
    sequences_per_pair = 2

    def build(self, data, rank, world_size):
        cfg = self.config
        self.bi_encoder = BiEncoder.from_backbone(
            cfg.model,
            local_files_only=cfg.local_files_only,
            max_seq_length=cfg.max_seq_length,
            adapter=cfg.adapter_path or None,
            attention_dropout=cfg.attention_dropout,
            **section_values(cfg, BiEncoderSettings),  # the model's settings, declared once in BiEncoderSettings
        )
        train = data.splits["train"]
        fit_lexical_cached(
            self.bi_encoder,
            self.fingerprint(train),
            lambda: dict.fromkeys(list(train["text1"]) + list(train["text2"])),
            cache_folder(data.data_dir, cfg.out),
            write=rank == 0,
        )
        if cfg.gradient_checkpointing and self.bi_encoder.is_lora:
            # non-reentrant: the frozen embeddings' output needs no grad, which reentrant checkpointing requires
            self.bi_encoder.encoder.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        elif cfg.gradient_checkpointing:
            self.bi_encoder.encoder.gradient_checkpointing_enable()
        self.book_work = data.book_work
        self.topics = (
            topic_index(data.splits["train"]) if (cfg.topic_adversary or cfg.independence_weight > 0) else None
        )
        weights = LossWeights(
            cfg.ce_weight,
            cfg.contrastive_weight,
            cfg.distill_weight,
            cfg.topic_adversary_weight,
            cfg.independence_weight,
        )
        return ContrastiveModule(
            self.bi_encoder,
            weights,
            temperature=cfg.temperature,
            distill_temperature=cfg.distill_temperature,
            num_topics=len(self.topics) if cfg.topic_adversary and self.topics else 0,
            adversary_lambda=cfg.topic_adversary_lambda,
            rank=rank,
            world_size=world_size,
        )

    def arrays(self, split, data_dir, out, train=False, write=True):
        cfg, model = self.config, self.bi_encoder
        window = cfg.training_window if train else "first"
        idf = hashlib.sha1(
            b"".join(idf.detach().cpu().numpy().tobytes() for _, idf in model.lexical_fingerprints())
        ).hexdigest()
        key = arrays_key(
            self.fingerprint(split),
            task="bi_encoder",
            tokenizer=tokenizer_fingerprint(model.tokenizer),
            max_seq_length=model.config.max_seq_length,
            window=window,
            seed=cfg.seed if window == "random" else None,
            side_features=model.config.side_feature_names,
            lexical=[model.config.lexical_buckets, model.config.lexical_top_k, model.config.name_top_k],
            idf=idf,
        )
        texts_a, texts_b = list(split["text1"]), list(split["text2"])
        arrays = cached_arrays(
            cache_folder(data_dir, out),
            key,
            write=write,
            build=lambda: bi_encoder_arrays(
                texts_a, texts_b, model, window=window, seed=cfg.seed, workers=cfg.preprocess_workers
            ),
        )
        works, topics = work_ids(split, self.book_work), topic_ids(split, self.topics)
        for side, i in (("a", 0), ("b", 1)):
            arrays.add_column(f"work_{side}", np.asarray(works[i], dtype=np.int64))
            arrays.add_column(f"topic_{side}", np.asarray(topics[i], dtype=np.int64))
        return _with_pair_columns(arrays, split)

    def batch_groups(self, train_split):
        if self.config.authors_per_batch < 1:
            return None
        # book ids are "<author folder>/<title>" (prepare's records); copies of a work may sit under two
        # authors' folders, which only splits that work over two groups
        authors = [book.split("/", 1)[0] for book in train_split["book1"]]
        index = label_index(authors)
        return [index[author] for author in authors], self.config.authors_per_batch

    def save_final(self, module, path, state_dict=None):
        weights = None if state_dict is None else _strip_prefix(state_dict, "bi_encoder.")
        module.bi_encoder.save_pretrained(path, state_dict=weights, merge=self.config.merge_lora)

    def add_teacher_logits(self, train_split, tokenized, accelerator, cache):
        if not self.config.teacher:
            return tokenized
        logits = teacher_logits(self.config, train_split, accelerator, cache, self.fingerprint(train_split))
        tokenized.add_column("teacher_logits", np.asarray(logits, dtype=np.float32))
        return tokenized


def _stack_tokens(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """Both sides' token matrices as one (2B, L, D) batch (the shorter side padded with zero rows)."""
    length = max(tokens_a.shape[1], tokens_b.shape[1])
    pad = [nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) for t in (tokens_a, tokens_b)]
    return torch.cat(pad)


def _with_pair_columns(arrays: PairArrays, split) -> PairArrays:
    """Add each pair's label and its row in the split (evaluation gathers by row)."""
    arrays.add_column("label", np.asarray(split["label"], dtype=np.int64))
    arrays.add_column("row", np.arange(len(split), dtype=np.int64))
    return arrays


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The weights under `prefix` (the servable model inside a training module), prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
