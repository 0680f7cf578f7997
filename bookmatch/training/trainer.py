"""The training loop for both models: `train_cross` (teacher) and `train_contrastive` (bi-encoder).

One code path for CPU, one GPU, DDP and DeepSpeed through accelerate. A *task* knows its model, its data and
its loss; the loop knows steps, evaluation, early stopping, checkpoints and exact resume:

* the batch order of an epoch is a pure function of (seed, epoch) (`samplers.NoDuplicatesBatchSampler`);
  a resumed run rebuilds it and skips the micro-batches the checkpoint says were consumed;
* model, optimizer, scheduler, grad scaler and every RNG come back through `accelerator.load_state`;
* nothing between two steps draws from the global RNGs (data loaders get their own generator, evaluation
  runs without dropout on a fixed subsample), so the restored RNG state is exactly the one the next step saw.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bookmatch.config import save_config
from bookmatch.precision import resolve_mixed_precision
from bookmatch.models.bi_encoder import BiEncoder
from bookmatch.models.cross_encoder import CrossEncoder
from bookmatch.progress import summary_line
from bookmatch.storage import atomic_write_json, read_json
from bookmatch.training import checkpoint as ckpt
from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig, TrainConfig
from bookmatch.training.data import (
    BiEncoderCollator,
    CrossCollator,
    load_pair_data,
    subsample,
    texts_fingerprint,
    tokenize_bi_encoder_split,
    tokenize_cross_split,
    topic_ids,
    topic_index,
    work_ids,
)
from bookmatch.training.losses import (
    SupConLoss,
    TopicAdversary,
    combine_losses,
    distillation_loss,
    independence_loss,
    pair_ce_loss,
)
from bookmatch.training.samplers import NoDuplicatesBatchSampler, shard_global_batch, text_key_ids

logger = logging.getLogger(__name__)

SUMMARY_NAME = "train_summary.json"
# Test hook: SIGKILL this process right after the given optimizer step (checks resume after a hard kill).
KILL_AT_STEP_ENV = "BOOKMATCH_TEST_KILL_AT_STEP"


# ---------------------------------------------------------------------------------------------------------------
# tasks: model, data and loss of each training program
# ---------------------------------------------------------------------------------------------------------------


class ContrastiveModule(nn.Module):
    """The bi-encoder plus the training-only parts (topic adversary); forward returns the loss terms.

    The losses are computed inside forward so that DDP / DeepSpeed see every trainable parameter used there.
    """

    def __init__(self, bi_encoder: BiEncoder, config: ContrastiveTrainConfig, rank: int, world_size: int, num_topics: int) -> None:
        super().__init__()
        self.bi_encoder = bi_encoder
        self.train_config = config
        self.supcon = SupConLoss(config.temperature, rank=rank, world_size=world_size)
        hidden = bi_encoder.config.hidden_size
        self.topic_adversary = (
            TopicAdversary(hidden, max(1, num_topics), lambda_=config.topic_adversary_lambda)
            if config.topic_adversary and num_topics > 0
            else None
        )

    def forward(self, batch: dict[str, torch.Tensor], with_losses: bool = True) -> dict[str, torch.Tensor]:
        out = self.bi_encoder(batch)
        if not with_losses:
            return {"logits": out["logits"]}
        cfg = self.train_config
        terms: dict[str, torch.Tensor] = {}
        terms.update(pair_ce_loss(out["logits"], batch["label"]))
        if cfg.contrastive_weight > 0:
            projected = torch.cat([out["projected_a"], out["projected_b"]])
            terms.update(self.supcon(projected, torch.cat([batch["work_a"], batch["work_b"]])))
        if "teacher_logits" in batch and cfg.distill_weight > 0:
            terms.update(distillation_loss(out["logits"], batch["teacher_logits"], cfg.distill_temperature))
        pooled = topics = None
        if self.topic_adversary is not None or cfg.independence_weight > 0:
            pooled = torch.cat([out["pooled_a"], out["pooled_b"]])
            topics = torch.cat([batch["topic_a"], batch["topic_b"]])
        if self.topic_adversary is not None:
            terms.update(self.topic_adversary(pooled, topics))
        if cfg.independence_weight > 0:
            terms.update(independence_loss(pooled, topics))
        total, logged = combine_losses(
            terms,
            {
                "ce_loss": cfg.ce_weight,
                "contrastive_loss": cfg.contrastive_weight,
                "distill_loss": cfg.distill_weight,
                "topic_adv_loss": cfg.topic_adversary_weight,
                "independence_loss": cfg.independence_weight,
            },
        )
        return {"logits": out["logits"], "loss": total, "logged": logged}


def cached_contrastive_step(module: ContrastiveModule, batch: dict[str, torch.Tensor], cached, accelerator) -> dict[str, float]:
    """One GradCache step of the bi-encoder loss: the full batch's SupCon at one mini-batch's memory.

    Both sides are stacked (rows [0, B) are text1, [B, 2B) text2) and padded to one length; every other
    term is computed on the full batch from the cached embeddings (`gradcache.CachedSupCon`). Leaves the
    gradients in `.grad`; the caller clips and steps.
    """
    bi_encoder, cfg = module.bi_encoder, module.train_config
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
            pooled, projected = bi_encoder.encode(mini["input_ids"], mini["attention_mask"])
        return projected, pooled

    def pair_terms(outputs) -> dict[str, torch.Tensor]:
        _, pooled = outputs
        with accelerator.autocast():
            logits = bi_encoder.classify(pooled[:size], pooled[size:], batch["style_a"], batch["style_b"])
        terms = dict(pair_ce_loss(logits, batch["label"]))
        if "teacher_logits" in batch and cfg.distill_weight > 0:
            terms.update(distillation_loss(logits, batch["teacher_logits"], cfg.distill_temperature))
        topics = torch.cat([batch["topic_a"], batch["topic_b"]])
        if module.topic_adversary is not None:
            terms.update(module.topic_adversary(pooled, topics))
        if cfg.independence_weight > 0:
            terms.update(independence_loss(pooled, topics))
        return terms

    total, terms = cached.step_with_terms(
        embed,
        inputs,
        torch.cat([batch["work_a"], batch["work_b"]]),
        pair_terms,
        weights={
            "ce_loss": cfg.ce_weight,
            "contrastive_loss": cfg.contrastive_weight,
            "distill_loss": cfg.distill_weight,
            "topic_adv_loss": cfg.topic_adversary_weight,
            "independence_loss": cfg.independence_weight,
        },
    )
    return {**{k: float(v) for k, v in terms.items()}, "loss": float(total)}


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


class _Task:
    name = ""
    sequences_per_pair = 1

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build(self, data, rank: int, world_size: int) -> nn.Module:
        raise NotImplementedError

    def tokenize(self, split, train: bool = False):
        raise NotImplementedError

    def collator(self, pad_to_multiple_of: int | None):
        raise NotImplementedError

    def save_final(self, module: nn.Module, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Save the servable model; `state_dict` (keys of the training module) is given under DeepSpeed."""
        raise NotImplementedError

    def add_teacher_logits(self, train_split, tokenized, accelerator, out: Path):
        return tokenized


class CrossTask(_Task):
    name = "cross"

    def build(self, data, rank, world_size):
        cfg = self.config
        self.cross = CrossEncoder.from_backbone(cfg.model, max_seq_length=cfg.max_seq_length, local_files_only=cfg.local_files_only)
        if cfg.gradient_checkpointing:
            self.cross.model.gradient_checkpointing_enable()
        return CrossModule(self.cross)

    def tokenize(self, split, train: bool = False):
        return tokenize_cross_split(split, self.cross, num_proc=self.config.preprocess_workers)

    def collator(self, pad_to_multiple_of):
        return CrossCollator(self.cross.tokenizer, pad_to_multiple_of)

    def save_final(self, module, path, state_dict=None):
        weights = None if state_dict is None else _strip_prefix(state_dict, "model.")
        CrossEncoder(self.cross.config, module.model, self.cross.tokenizer).save_pretrained(path, state_dict=weights)


class ContrastiveTask(_Task):
    name = "contrastive"
    sequences_per_pair = 2

    def build(self, data, rank, world_size):
        cfg = self.config
        self.bi_encoder = BiEncoder.from_backbone(
            cfg.model,
            local_files_only=cfg.local_files_only,
            projection_dim=cfg.projection_dim,
            max_seq_length=cfg.max_seq_length,
            pooling=cfg.pooling,
            side_features=cfg.side_features,
            lexical_buckets=cfg.lexical_buckets,
            lexical_top_k=cfg.lexical_top_k,
            name_top_k=cfg.name_top_k,
            pooled_cosine=cfg.pooled_cosine,
            long_texts=cfg.long_texts,
        )
        train = data.splits["train"]
        self.bi_encoder.fit_lexical(dict.fromkeys(list(train["text1"]) + list(train["text2"])))
        if cfg.gradient_checkpointing:
            self.bi_encoder.encoder.gradient_checkpointing_enable()
        self.book_work = data.book_work
        self.topics = topic_index(data.splits["train"]) if (cfg.topic_adversary or cfg.independence_weight > 0) else None
        return ContrastiveModule(self.bi_encoder, cfg, rank, world_size, len(self.topics or {}))

    def tokenize(self, split, train: bool = False):
        return tokenize_bi_encoder_split(
            split, self.bi_encoder, work_ids(split, self.book_work), topic_ids(split, self.topics),
            num_proc=self.config.preprocess_workers, window=self.config.training_window if train else "first",
            seed=self.config.seed,
        )

    def collator(self, pad_to_multiple_of):
        return BiEncoderCollator(self.bi_encoder.tokenizer, pad_to_multiple_of)

    def save_final(self, module, path, state_dict=None):
        weights = None if state_dict is None else _strip_prefix(state_dict, "bi_encoder.")
        module.bi_encoder.save_pretrained(path, state_dict=weights)

    def add_teacher_logits(self, train_split, tokenized, accelerator, out):
        if not self.config.teacher:
            return tokenized
        logits = teacher_logits(self.config, train_split, accelerator, out)
        return tokenized.add_column("teacher_logits", logits.tolist())


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The weights under `prefix` (the servable model inside a training module), prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def teacher_logits(config: ContrastiveTrainConfig, train_split, accelerator, out: Path) -> np.ndarray:
    """The teacher's (N, 2) logits over the training pairs, computed once and cached in OUT/cache/.

    The cache key covers the teacher's weights and the exact pair texts, so a changed teacher or data set
    never reuses stale logits. Ranks score interleaved shards and gather the results.
    """
    import hashlib

    from accelerate.utils import gather_object

    teacher_dir = Path(config.teacher)
    weights = teacher_dir / "model.safetensors"
    stamp = f"{teacher_dir.resolve()}|{weights.stat().st_size if weights.exists() else 0}|{weights.stat().st_mtime_ns if weights.exists() else 0}"
    key = hashlib.sha1(f"{stamp}|{texts_fingerprint(train_split)}".encode()).hexdigest()[:16]
    cache = out / "cache" / f"teacher_logits-{key}.npy"
    if cache.exists():
        logger.info("teacher logits: reusing %s", cache)
        return np.load(cache)
    teacher = CrossEncoder.from_pretrained(teacher_dir, device=accelerator.device)
    rows = list(range(accelerator.process_index, len(train_split), accelerator.num_processes))
    start = time.perf_counter()
    shard = train_split.select(rows)
    with accelerator.autocast():  # bf16/fp16 teacher inference when the run uses mixed precision
        mine = teacher.predict_logits(list(zip(list(shard["text1"]), list(shard["text2"]))), batch_size=config.teacher_batch_size).numpy()
    gathered = gather_object([(r, mine[i].tolist()) for i, r in enumerate(rows)])
    logits = np.zeros((len(train_split), 2), dtype=np.float32)
    for row, values in gathered:
        logits[row] = values
    if accelerator.is_main_process:
        import io

        from bookmatch.storage import atomic_write_bytes

        buffer = io.BytesIO()
        np.save(buffer, logits)
        atomic_write_bytes(cache, buffer.getvalue())
        logger.info(summary_line("teacher logits", len(train_split), time.perf_counter() - start, "pairs"))
    del teacher
    return logits


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------


def pair_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Loss (cross-entropy), accuracy, F1 and ROC AUC of 2-class logits (AUC is NaN with one class only)."""
    from sklearn.metrics import f1_score, roc_auc_score

    logits = logits.astype(np.float64)
    log_norm = np.logaddexp(logits[:, 0], logits[:, 1])
    loss = float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))
    prob = np.exp(logits[:, 1] - log_norm)
    predicted = (logits[:, 1] > logits[:, 0]).astype(int)
    auc = float(roc_auc_score(labels, prob)) if len(set(labels.tolist())) == 2 else float("nan")
    return {
        "loss": loss,
        "accuracy": float(np.mean(predicted == labels)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "auc": auc,
    }


@torch.no_grad()
def evaluate(module: nn.Module, split, collate, config: TrainConfig, accelerator) -> dict[str, float]:
    """Metrics on the (already subsampled) validation split; ranks take interleaved rows and gather."""
    from accelerate.utils import gather_object

    was_training = module.training
    module.eval()
    rows = list(range(accelerator.process_index, len(split), accelerator.num_processes))
    results: list[tuple[int, list[float], int]] = []
    try:
        for start in range(0, len(rows), config.eval_batch_size):
            chunk = rows[start : start + config.eval_batch_size]
            batch = collate(split.select(chunk).to_list())
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                logits = module(batch, with_losses=False)["logits"].float().cpu().numpy()
            results += [(int(r), logits[i].tolist(), int(batch["label"][i])) for i, r in enumerate(batch["row"].tolist())]
    finally:
        module.train(was_training)
    gathered = sorted(gather_object(results))
    logits = np.asarray([g[1] for g in gathered], dtype=np.float64).reshape(-1, 2)
    labels = np.asarray([g[2] for g in gathered], dtype=np.int64)
    return pair_metrics(logits, labels)


# ---------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------


def train_cross(config: CrossTrainConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Train the cross-encoder teacher; returns OUT/final (the best validation-AUC model).

    `on_step(global_step)` runs after every optimizer step (and its evaluation/checkpoint), e.g. to stop a run.
    """
    return run_training(CrossTask(config), on_step)


def train_contrastive(config: ContrastiveTrainConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Train the bi-encoder (optionally distilled from `config.teacher`); returns OUT/final."""
    return run_training(ContrastiveTask(config), on_step)


def _build_accelerator(config: TrainConfig, find_unused_parameters: bool = False):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from accelerate.state import AcceleratorState

    # Accelerate keeps one process-wide state: a second run in this process (the pipeline trains the teacher,
    # then the bi-encoder) with another precision must drop it. The process group (PartialState) is kept.
    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != config.mixed_precision:
        AcceleratorState._reset_state()
    if torch.cuda.is_available() and not config.cpu:
        # TF32 matmuls: ~2x faster fp32 work on Ampere+ for a precision loss far below training noise
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    if _deepspeed_launch_without_gpu():
        # accelerate chooses no process-group backend for DeepSpeed on a machine without a GPU, and then counts
        # one process per rank (every rank its own main process); naming gloo gives it the true ranks
        from accelerate.utils import InitProcessGroupKwargs

        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        cpu=config.cpu,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )


@contextlib.contextmanager
def _whole_models(plugin):
    """Build and load models whole on every rank, even under ZeRO-3.

    accelerate registers its DeepSpeed config with transformers even when `zero3_init_flag` is false, and under
    ZeRO-3 `from_pretrained` then partitions the encoder at load, in the training dtype, while our heads are
    built whole in fp32: DeepSpeed refuses the mix under bf16, and the teacher (never wrapped by an engine)
    could not run partitioned. Our encoders fit on one device, so every rank builds them whole and the engine
    partitions the prepared model (its fp32 masters then come from the unrounded pretrained weights).
    `plugin`: the accelerator's DeepSpeed plugin, None without DeepSpeed.
    """
    if plugin is None:
        yield
        return
    if plugin.is_zero3_init_enabled():
        from bookmatch.config import ConfigError

        raise ConfigError("zero3_init_flag: true is not supported (bookmatch builds each model whole on every rank, then "
                          "DeepSpeed partitions it); set zero3_init_flag: false in the accelerate config")
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def _deepspeed_fp32_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Under DeepSpeed bf16/fp16 the module holds 16-bit weights; the fp32 master weights live in the optimizer's
    partitions. Gathers them (a collective: every rank calls this) so final/ keeps full precision."""
    from deepspeed.utils import safe_get_full_fp32_param

    weights = {}
    for name, param in module.named_parameters():
        if param.dtype == torch.float32:
            continue
        full = safe_get_full_fp32_param(param)  # None for a frozen weight: it has no master copy
        weights[name] = (param if full is None else full).detach().float().cpu().clone()
    return weights


def _deepspeed_launch_without_gpu() -> bool:
    """A rank started by `accelerate launch --use_deepspeed` (its environment says so) on a machine with no GPU."""
    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and int(os.environ.get("LOCAL_RANK", -1)) != -1
    return launched and not torch.cuda.is_available()


def _optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    head_lr = config.head_lr or config.lr
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        # biases and normalisation weights are not decayed (standard for transformer fine-tuning)
        groups.setdefault((_is_backbone(name), param.ndim >= 2), []).append(param)
    return torch.optim.AdamW(
        [
            {"params": params, "lr": config.lr if backbone else head_lr, "weight_decay": config.weight_decay if decayed else 0.0}
            for (backbone, decayed), params in sorted(groups.items())
        ],
        lr=config.lr,
    )


def _is_backbone(parameter_name: str) -> bool:
    """Pretrained encoder weights (embeddings and transformer layers) as opposed to new heads."""
    return "embeddings." in parameter_name or ".layer." in parameter_name or ".layers." in parameter_name


def _warmup_steps(config: TrainConfig, total_steps: int) -> int:
    return max(0, min(config.warmup_steps, int(config.warmup_max_fraction * total_steps)))


def _progress_bar(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    if not disable:
        disable = not (sys.stderr.isatty() or os.environ.get("BOOKMATCH_PROGRESS") == "1")
    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=disable, dynamic_ncols=True, file=sys.stderr)


def run_training(task: _Task, on_step: Callable[[int], None] | None = None) -> Path:
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    config = task.config
    if not config.data or not config.out:
        from bookmatch.errors import InputError

        raise InputError("training needs a data folder (--data, from `bookmatch prepare`) and an output folder (--out)")
    out = Path(config.out)
    final_dir = out / "final"
    summary_path = out / SUMMARY_NAME
    if config.resume and summary_path.exists() and read_json(summary_path).get("complete") and final_dir.exists():
        logger.info("%s: already complete (%s); nothing to resume", out, summary_path)
        return final_dir

    # resolved once, in the config that is saved with the run, so a resume reuses the same precision
    config.mixed_precision = resolve_mixed_precision(config.mixed_precision, torch.cuda.is_available() and not config.cpu)
    # with the contrastive term off the projection head gets no gradient, which DDP must be told
    accelerator = _build_accelerator(config, find_unused_parameters=getattr(config, "contrastive_weight", 1.0) == 0)
    rank, world_size = accelerator.process_index, accelerator.num_processes
    set_seed(config.seed)

    data = load_pair_data(config.data)
    train_split = subsample(data.splits["train"], config.sample, config.seed)
    val_split = subsample(data.splits["validation"], config.eval_max_pairs, config.seed + 1)
    deepspeed_plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    with _whole_models(deepspeed_plugin):  # the model, and the teacher its logits come from
        module = task.build(data, rank, world_size)
        # every process tokenizes its own in-memory copy (nothing is cached to disk, so nothing to share)
        train_data = task.tokenize(train_split, train=True)
        val_data = task.tokenize(val_split)
        out.mkdir(parents=True, exist_ok=True)
        train_data = task.add_teacher_logits(train_split, train_data, accelerator, out)
    pad_multiple = 8 if accelerator.device.type == "cuda" else None
    collate = task.collator(pad_multiple)

    # one global batch (batch_size per process) has no text twice; each process takes its slice of it
    sampler = NoDuplicatesBatchSampler(
        text_key_ids(list(train_split["text1"]), list(train_split["text2"])),
        batch_size=config.batch_size * world_size,
        seed=config.seed,
        lengths=list(train_data["length"]) if config.group_by_length else None,
        drop_last=world_size > 1,
    )
    batches_per_epoch = [len(sampler.batches(epoch)) for epoch in range(config.epochs)]
    total_steps = sum(batches_per_epoch) // config.grad_accum
    if config.max_steps > 0:
        total_steps = min(total_steps, config.max_steps)
    if total_steps < 1:
        from bookmatch.errors import InputError

        raise InputError(f"{config.data}: {len(train_split)} training pairs make no full optimizer step; lower --batch-size/--grad-accum")

    optimizer = _optimizer(module, config)
    scheduler = get_linear_schedule_with_warmup(optimizer, _warmup_steps(config, total_steps), total_steps)
    if deepspeed_plugin is not None:
        # our loaders are not passed to prepare(), so DeepSpeed cannot infer the micro-batch size ("auto"); and
        # under DeepSpeed the engine clips (accelerator.clip_grad_norm_ defers to it), so it gets our norm
        deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        deepspeed_plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm
    if config.compile:
        module = torch.compile(module)
    model, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    state = ckpt.TrainerState()
    if config.resume:
        latest = ckpt.latest_checkpoint(out)
        if latest is not None:
            state = ckpt.load_checkpoint(accelerator, latest)
            accelerator.step = state.micro_step
            logger.info("resumed from %s (step %d, epoch %d, batch %d)", latest, state.global_step, state.epoch, state.batch_in_epoch)
        else:
            logger.info("no checkpoint in %s: starting from scratch", out)
    elif accelerator.is_main_process:
        ckpt.clear_checkpoints(out)
        if summary_path.exists():
            summary_path.unlink()
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    accelerator.wait_for_everyone()

    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0") or 0)
    bar = _progress_bar(total_steps, state.global_step, disable=not accelerator.is_local_main_process)
    start_time = time.perf_counter()
    start_sequences = state.sequences_seen
    last_eval_step = state.history[-1]["step"] if state.history else -1
    running: dict[str, float] = {}

    def save_final() -> None:
        accelerator.wait_for_everyone()
        state_dict = None
        if deepspeed_plugin is not None:
            # ZeRO-3 shards the weights themselves: every rank takes part in gathering them. Under ZeRO-1/2 each
            # weight is a view into one flat buffer, which safetensors refuses to save: each gets its own copy.
            state_dict = accelerator.get_state_dict(model)
            # a collective too: every rank gathers, whether or not get_state_dict handed it the weights
            fp32_weights = _deepspeed_fp32_weights(accelerator.unwrap_model(model))
            if state_dict is not None:
                state_dict = {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()} | fp32_weights
        if accelerator.is_main_process:
            task.save_final(accelerator.unwrap_model(model), final_dir, state_dict)
        accelerator.wait_for_everyone()

    def record_eval() -> bool:
        """Evaluate, keep the best model as final/, and say whether early stopping triggers."""
        nonlocal last_eval_step
        metrics = evaluate(accelerator.unwrap_model(model), val_data, collate, config, accelerator)
        last_eval_step = state.global_step
        metric = metrics["auc"] if math.isfinite(metrics["auc"]) else -metrics["loss"]
        improved = metric > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.evals_since_best = metric, state.global_step, 0
            save_final()
        else:
            state.evals_since_best += 1
        state.history.append({"step": state.global_step, "epoch": state.epoch, **{f"val_{k}": v for k, v in metrics.items()}, **running})
        if accelerator.is_main_process:
            logger.info(
                "step %d: val loss %.4f acc %.4f f1 %.4f auc %.4f%s",
                state.global_step, metrics["loss"], metrics["accuracy"], metrics["f1"], metrics["auc"], " (best)" if improved else "",
            )
        return config.patience > 0 and state.evals_since_best >= config.patience

    cached = None
    if isinstance(task, ContrastiveTask) and config.cached_contrastive:
        from bookmatch.training.gradcache import CachedSupCon

        # GradCache embeds outside the DDP/DeepSpeed forward and backpropagates itself (no loss scaling)
        if world_size > 1 or config.mixed_precision == "fp16" or config.grad_accum > 1:
            from bookmatch.errors import InputError

            raise InputError("--cached-contrastive runs on one process without --fp16 or --grad-accum; use --bf16 and a larger --batch-size instead")
        cached = CachedSupCon(accelerator.unwrap_model(model).supcon, mini_batch_size=config.mini_batch_size)

    model.train()
    stop = state.stopped_early or state.global_step >= total_steps
    for epoch in range(state.epoch, config.epochs):
        if stop:
            break
        epoch_batches = [shard_global_batch(b, rank, world_size) for b in sampler.batches(epoch)]
        skip = state.batch_in_epoch if epoch == state.epoch else 0
        state.epoch, state.batch_in_epoch = epoch, skip
        loader = torch.utils.data.DataLoader(
            train_data,
            batch_sampler=epoch_batches[skip:],
            collate_fn=collate,
            num_workers=config.num_workers,
            pin_memory=accelerator.device.type == "cuda",
            # its own generator: creating a loader must not draw from the global RNG that dropout uses
            generator=torch.Generator().manual_seed(config.seed + epoch),
        )
        for batch in loader:
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model):
                if cached is not None:
                    logged = cached_contrastive_step(accelerator.unwrap_model(model), batch, cached, accelerator)
                else:
                    output = model(batch)
                    accelerator.backward(output["loss"])
                    logged = output["logged"]
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.micro_step += 1
            state.batch_in_epoch += 1
            state.sequences_seen += int(batch["label"].shape[0]) * task.sequences_per_pair * world_size
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.global_step += 1
            running = {f"train_{k}": round(float(v), 6) for k, v in logged.items()}
            elapsed = time.perf_counter() - start_time
            bar.update(1)
            bar.set_postfix(loss=f"{running.get('train_loss', float('nan')):.4f}", seq_s=f"{(state.sequences_seen - start_sequences) / max(elapsed, 1e-9):.1f}")
            if accelerator.is_main_process and config.log_steps > 0 and state.global_step % config.log_steps == 0:
                logger.info("step %d/%d: %s", state.global_step, total_steps, " ".join(f"{k}={v:.4f}" for k, v in running.items()))
            if state.global_step % config.eval_steps == 0:
                stop = record_eval()
            if state.global_step >= total_steps:
                stop = True
            state.stopped_early = stop and state.global_step < total_steps
            if state.global_step % config.save_steps == 0 and not stop:
                ckpt.save_checkpoint(accelerator, out, state, config.save_total_limit)
            if on_step is not None:
                on_step(state.global_step)
            if kill_at and state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if stop:
                break
        else:
            state.epoch, state.batch_in_epoch = epoch + 1, 0
    bar.close()

    if last_eval_step != state.global_step:
        record_eval()
    if not final_dir.exists():
        save_final()
    elapsed = time.perf_counter() - start_time
    sequences = state.sequences_seen - start_sequences
    line = summary_line(f"train {task.name}", state.global_step, elapsed, "steps") + f", {sequences / max(elapsed, 1e-9):,.1f} sequences/s"
    if accelerator.is_main_process:
        atomic_write_json(
            summary_path,
            {
                "task": task.name,
                "complete": True,
                "final_dir": str(final_dir),
                "global_step": state.global_step,
                "total_steps": total_steps,
                "best_step": state.best_step,
                "best_val_auc": next((h["val_auc"] for h in state.history if h["step"] == state.best_step), None),
                "stopped_early": state.stopped_early,
                "train_seconds": round(elapsed, 3),
                "sequences_per_second": round(sequences / max(elapsed, 1e-9), 3),
                "summary": line,
                "history": state.history,
            },
        )
        logger.info(line)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final_dir
