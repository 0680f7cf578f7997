"""The training loop for both models: `train_cross` (teacher) and `train_contrastive` (bi-encoder).

One code path for CPU, one GPU, DDP and DeepSpeed through accelerate. A *task* knows its model, its data and
its loss (`tasks.py`); the loop knows steps, evaluation, early stopping, checkpoints and exact resume:

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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bookmatch.config import save_config
from bookmatch.evaluation.metrics import rank_auc
from bookmatch.precision import resolve_mixed_precision
from bookmatch.progress import summary_line
from bookmatch.storage import atomic_write_json
from bookmatch.training import checkpoint as ckpt
from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig, TrainConfig
from bookmatch.training.data import load_pair_data, subsample
from bookmatch.training.features import PairArrays, cache_folder
from bookmatch.training.samplers import NoDuplicatesBatchSampler, shard_global_batch, text_key_ids
from bookmatch.training.tasks import ContrastiveTask, CrossTask, Task, cached_contrastive_step

logger = logging.getLogger(__name__)

SUMMARY_NAME = "train_summary.json"


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------


def pair_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Loss (cross-entropy), accuracy, F1 and ROC AUC of 2-class logits (AUC is NaN with one class only)."""
    logits = logits.astype(np.float64)
    log_norm = np.logaddexp(logits[:, 0], logits[:, 1])
    loss = float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))
    margin = logits[:, 1] - logits[:, 0]  # ranks pairs as the probability does, with exact ties kept
    predicted = margin > 0
    actual = labels == 1
    true_positives = int(np.sum(predicted & actual))
    predicted_or_actual = int(predicted.sum() + actual.sum())
    return {
        "loss": loss,
        "accuracy": float(np.mean(predicted == actual)),
        "f1": 2 * true_positives / predicted_or_actual if predicted_or_actual else 0.0,
        "auc": rank_auc(labels, margin),
    }


@torch.no_grad()
def evaluate(module: nn.Module, split: PairArrays, batch_size: int, accelerator) -> dict[str, float]:
    """Metrics on the (already subsampled) validation split; ranks take interleaved rows and gather."""
    from accelerate.utils import gather_object

    was_training = module.training
    module.eval()
    rows = list(range(accelerator.process_index, len(split), accelerator.num_processes))
    results: list[tuple[int, list[float], int]] = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = split.batch(rows[start : start + batch_size])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                logits = module(batch, with_losses=False)["logits"].float().cpu().numpy()
            results += [
                (int(r), logits[i].tolist(), int(batch["label"][i])) for i, r in enumerate(batch["row"].tolist())
            ]
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
    return TrainingRecipe(CrossTask(config), on_step).run()


def train_contrastive(config: ContrastiveTrainConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Train the bi-encoder (optionally distilled from `config.teacher`); returns OUT/final."""
    return TrainingRecipe(ContrastiveTask(config), on_step).run()


def _build_accelerator(config: TrainConfig, find_unused_parameters: bool = False):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

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
    cpu = config.cpu
    # On a machine without a GPU, accelerate chooses no process-group backend for a multi-process launch unless
    # told the run is on CPU, and then runs every rank as its own single-process job (each the main process,
    # each training on the whole batch): name gloo for DeepSpeed, and force the CPU for DDP.
    if _launched_without_gpu():
        if _deepspeed_launch():
            from accelerate.utils import InitProcessGroupKwargs

            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        else:
            cpu = True
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        cpu=cpu,
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

        raise ConfigError(
            "zero3_init_flag: true is not supported (bookmatch builds each model whole on every rank, then "
            "DeepSpeed partitions it); set zero3_init_flag: false in the accelerate config"
        )
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


def _launched_without_gpu() -> bool:
    """A rank of a multi-process launch (torchrun, `accelerate launch`: its environment says so) on a machine
    with no GPU."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available()


def _deepspeed_launch() -> bool:
    """A rank started by `accelerate launch --use_deepspeed` (its environment says so)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


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
            {
                "params": params,
                "lr": config.lr if backbone else head_lr,
                "weight_decay": config.weight_decay if decayed else 0.0,
            }
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
    """A bar on a terminal, a plain line every BOOKMATCH_PROGRESS_SECONDS elsewhere (`sky jobs logs`)."""
    from bookmatch.progress import progress_bar

    return progress_bar(total, desc="train", unit="step", initial=initial, disable=disable)


# ---------------------------------------------------------------------------------------------------------------
# where a step's time goes
# ---------------------------------------------------------------------------------------------------------------

PHASES = ("data", "forward_backward", "optimizer", "logging")


class StepTimer:
    """Seconds spent in each phase of the loop (data wait, forward/backward, optimizer, logging).

    Host clocks, no device sync: on a GPU a phase's kernels may finish in a later phase, and the wait shows up
    where the host next blocks (a log step reading the loss); the split is the host's view of the loop.
    """

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """The time since the previous mark was spent in `phase`."""
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now

    def restart(self) -> None:
        """Time from here on counts; what passed since the last mark (evaluation, saving) is not a step's."""
        self._last = time.perf_counter()

    def per_step(self, steps: int) -> dict[str, float]:
        """Milliseconds per optimizer step in each phase."""
        return {phase: round(1000 * value / max(steps, 1), 3) for phase, value in self.seconds.items()}

    def describe(self, steps: int) -> str:
        total = sum(self.seconds.values()) or 1e-9
        return ", ".join(
            f"{phase.replace('_', '/')} {ms:.1f} ms ({self.seconds[phase] / total:.0%})"
            for phase, ms in self.per_step(steps).items()
        )


# ---------------------------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------------------------


class TrainingRecipe:
    """One training run of a task: set up (accelerator, data, model, optimizer), resume, loop, evaluate, save.

    `callbacks` run after every optimizer step (and its evaluation/checkpoint) with the global step, e.g. to
    stop a run (the resume tests kill the process there).
    """

    def __init__(self, task: Task, on_step: Callable[[int], None] | None = None) -> None:
        self.task = task
        self.config = task.config
        self.callbacks = [on_step] if on_step is not None else []
        if not self.config.data or not self.config.out:
            from bookmatch.errors import InputError

            raise InputError(
                "training needs a data folder (--data, from `bookmatch prepare`) and an output folder (--out)"
            )
        self.out = Path(self.config.out)
        self.final_dir = self.out / "final"
        self.summary_path = self.out / SUMMARY_NAME
        self.state = ckpt.TrainerState()
        self.timer = StepTimer()
        self.last_logged = None  # the latest step's LossLog (read at log and evaluation steps only)

    def run(self) -> Path:
        config = self.config
        if config.resume and ckpt.run_complete(self.out):  # a complete summary and a final/ that verifies
            logger.info("%s: already complete (%s); nothing to resume", self.out, self.summary_path)
            return self.final_dir
        self._setup_accelerator()
        self._setup_data()
        self._setup_model()
        self._setup_batches()
        self._setup_optimizer()
        self._resume_or_start()
        self._train()
        self._finish()
        return self.final_dir

    # set-up ----------------------------------------------------------------------------------------------------
    def _setup_accelerator(self) -> None:
        from accelerate.utils import set_seed

        config = self.config
        # resolved once, in the config that is saved with the run, so a resume reuses the same precision
        config.mixed_precision = resolve_mixed_precision(
            config.mixed_precision, torch.cuda.is_available() and not config.cpu
        )
        # with the contrastive term off the projection head gets no gradient, which DDP must be told
        self.accelerator = _build_accelerator(
            config, find_unused_parameters=getattr(config, "contrastive_weight", 1.0) == 0
        )
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.deepspeed_plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        self.on_gpu = self.accelerator.device.type == "cuda"
        set_seed(config.seed)

    def _setup_data(self) -> None:
        config = self.config
        self.data = load_pair_data(config.data)
        self.train_split = subsample(self.data.splits["train"], config.sample, config.seed)
        self.val_split = subsample(self.data.splits["validation"], config.eval_max_pairs, config.seed + 1)

    def _setup_model(self) -> None:
        """The module (model + training heads), then the splits' model inputs (they need its tokenizer) and the
        teacher's logits; arrays come from the features cache where an earlier run left them."""
        task, accelerator = self.task, self.accelerator
        with _whole_models(self.deepspeed_plugin):  # the model, and the teacher its logits come from
            self.module = task.build(self.data, self.rank, self.world_size)
            self.out.mkdir(parents=True, exist_ok=True)
            # the main process computes and writes the arrays; the others then read them
            with accelerator.main_process_first():
                write = accelerator.is_main_process
                self.train_arrays = task.arrays(self.train_split, self.data.data_dir, self.out, train=True, write=write)
                self.val_arrays = task.arrays(self.val_split, self.data.data_dir, self.out, write=write)
            cache = cache_folder(self.data.data_dir, self.out)
            self.train_arrays = task.add_teacher_logits(self.train_split, self.train_arrays, accelerator, cache)
        pad_multiple = 8 if self.on_gpu else None
        self.train_arrays.pad_to_multiple_of = self.val_arrays.pad_to_multiple_of = pad_multiple

    def _setup_batches(self) -> None:
        """The epoch-seeded batch order and the run's optimizer steps."""
        config = self.config
        # one global batch (batch_size per process) has no text twice; each process takes its slice of it
        groups, groups_per_batch = self.task.batch_groups(self.train_split) or (None, 1)
        self.sampler = NoDuplicatesBatchSampler(
            text_key_ids(list(self.train_split["text1"]), list(self.train_split["text2"])),
            batch_size=config.batch_size * self.world_size,
            seed=config.seed,
            lengths=self.train_arrays.lengths.tolist() if config.group_by_length else None,
            drop_last=self.world_size > 1,
            groups=groups,
            groups_per_batch=groups_per_batch * self.world_size,
        )
        batches_per_epoch = [len(self.sampler.batches(epoch)) for epoch in range(config.epochs)]
        self.total_steps = sum(batches_per_epoch) // config.grad_accum
        if config.max_steps > 0:
            self.total_steps = min(self.total_steps, config.max_steps)
        if self.total_steps < 1:
            from bookmatch.errors import InputError

            raise InputError(
                f"{config.data}: {len(self.train_split)} training pairs make no full optimizer step; "
                "lower --batch-size/--grad-accum"
            )

    def _setup_optimizer(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        config, accelerator = self.config, self.accelerator
        optimizer = _optimizer(self.module, config)
        self.scheduler = get_linear_schedule_with_warmup(
            optimizer, _warmup_steps(config, self.total_steps), self.total_steps
        )
        if self.deepspeed_plugin is not None:
            # our loaders are not passed to prepare(), so DeepSpeed cannot infer the micro-batch size ("auto"); and
            # under DeepSpeed the engine clips (accelerator.clip_grad_norm_ defers to it), so it gets our norm
            self.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
            self.deepspeed_plugin.deepspeed_config["gradient_clipping"] = config.max_grad_norm
        module = torch.compile(self.module) if config.compile else self.module
        self.model, self.optimizer = accelerator.prepare(module, optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        self.cached = self._gradcache()

    def _gradcache(self):
        """GradCache's cached SupCon for --cached-contrastive (None otherwise)."""
        config = self.config
        if not (isinstance(self.task, ContrastiveTask) and config.cached_contrastive):
            return None
        from bookmatch.training.gradcache import CachedSupCon

        # GradCache embeds outside the DDP/DeepSpeed forward and backpropagates itself (no loss scaling)
        if self.world_size > 1 or config.mixed_precision == "fp16" or config.grad_accum > 1:
            from bookmatch.errors import InputError

            raise InputError(
                "--cached-contrastive runs on one process without --fp16 or --grad-accum; "
                "use --bf16 and a larger --batch-size instead"
            )
        return CachedSupCon(self.accelerator.unwrap_model(self.model).supcon, mini_batch_size=config.mini_batch_size)

    def _resume_or_start(self) -> None:
        """Load the latest checkpoint (--resume), or clear an older run's checkpoints; write the config."""
        accelerator, out = self.accelerator, self.out
        if self.config.resume:
            latest = ckpt.resume_checkpoint(accelerator, out)  # the newest that verifies; logs what it skipped
            if latest is not None:
                self.state = state = ckpt.load_checkpoint(accelerator, latest)
                accelerator.step = state.micro_step
                logger.info(
                    "resumed from %s (step %d, epoch %d, batch %d)",
                    latest,
                    state.global_step,
                    state.epoch,
                    state.batch_in_epoch,
                )
            else:
                logger.info("no checkpoint in %s: starting from scratch", out)
        elif accelerator.is_main_process:
            ckpt.clear_checkpoints(out)
            if self.summary_path.exists():
                self.summary_path.unlink()
        if accelerator.is_main_process:
            save_config(self.config, out / "config.yaml")
        accelerator.wait_for_everyone()

    # the loop --------------------------------------------------------------------------------------------------
    def _train(self) -> None:
        state = self.state
        self.bar = _progress_bar(
            self.total_steps, state.global_step, disable=not self.accelerator.is_local_main_process
        )
        self.start_time = time.perf_counter()
        self.start_sequences = state.sequences_seen
        self.start_step = state.global_step
        self.last_eval_step = state.history[-1]["step"] if state.history else -1
        self.running: dict[str, float] = {}
        self.model.train()
        stop = state.stopped_early or state.global_step >= self.total_steps
        for epoch in range(state.epoch, self.config.epochs):
            if stop:
                break
            skip = state.batch_in_epoch if epoch == state.epoch else 0
            state.epoch, state.batch_in_epoch = epoch, skip
            self.timer.restart()
            for batch in self._epoch_batches(epoch, skip):
                self.timer.mark("data")
                synced = self._train_step(batch)
                if synced and self._after_step():
                    stop = True
                    break
            else:
                state.epoch, state.batch_in_epoch = epoch + 1, 0
        self.bar.close()

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        """This process's micro-batches of `epoch` after the first `skip`, on the device."""
        config = self.config
        batches = [shard_global_batch(b, self.rank, self.world_size) for b in self.sampler.batches(epoch)][skip:]
        # the arrays batch a list of rows themselves (no per-row collation): one loader item is one batch
        loader = torch.utils.data.DataLoader(
            self.train_arrays,
            sampler=batches,
            batch_size=None,
            num_workers=config.num_workers,
            pin_memory=self.on_gpu,
            persistent_workers=False,
            # its own generator: creating a loader must not draw from the global RNG that dropout uses
            generator=torch.Generator().manual_seed(config.seed + epoch),
        )
        device = self.accelerator.device
        for batch in loader:
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def _train_step(self, batch: dict[str, torch.Tensor]) -> bool:
        """One micro-batch: forward, backward and (when gradients sync) clip and optimizer step. Returns whether
        an optimizer step completed."""
        accelerator, model, config = self.accelerator, self.model, self.config
        with accelerator.accumulate(model):
            if self.cached is not None:
                self.last_logged = cached_contrastive_step(
                    accelerator.unwrap_model(model), batch, self.cached, accelerator
                )
            else:
                output = model(batch)
                accelerator.backward(output["loss"])
                self.last_logged = output["logged"]
            self.timer.mark("forward_backward")
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        state = self.state
        state.micro_step += 1
        state.batch_in_epoch += 1
        state.sequences_seen += int(batch["label"].shape[0]) * self.task.sequences_per_pair * self.world_size
        if accelerator.sync_gradients:
            self.scheduler.step()
            state.global_step += 1
        self.timer.mark("optimizer")
        return accelerator.sync_gradients

    def _after_step(self) -> bool:
        """Logging, evaluation, checkpoint and callbacks after an optimizer step; returns whether to stop."""
        state, config = self.state, self.config
        self.bar.update(1)
        log_step = config.log_steps > 0 and state.global_step % config.log_steps == 0
        eval_step = state.global_step % config.eval_steps == 0
        if log_step:
            self._read_losses()  # with evaluation, the only place the loop waits for the device
            if self.accelerator.is_main_process:
                logger.info(
                    "step %d/%d: %s",
                    state.global_step,
                    self.total_steps,
                    " ".join(f"{k}={v:.4f}" for k, v in self.running.items()),
                )
        self.timer.mark("logging")
        stop = self._evaluate() if eval_step else False
        if state.global_step >= self.total_steps:
            stop = True
        state.stopped_early = stop and state.global_step < self.total_steps
        if state.global_step % config.save_steps == 0 and not stop:
            ckpt.save_checkpoint(self.accelerator, self.out, state, config.save_total_limit)
        for callback in self.callbacks:
            callback(state.global_step)
        self.timer.restart()
        return stop

    def _read_losses(self) -> None:
        state = self.state
        self.running = {f"train_{k}": round(float(v), 6) for k, v in (self.last_logged or {}).items()}
        elapsed = time.perf_counter() - self.start_time
        rate = (state.sequences_seen - self.start_sequences) / max(elapsed, 1e-9)
        self.bar.set_postfix(loss=f"{self.running.get('train_loss', float('nan')):.4f}", seq_s=f"{rate:.1f}")

    # evaluation and saving -------------------------------------------------------------------------------------
    def _evaluate(self) -> bool:
        """Evaluate, keep the best model as final/, and say whether early stopping triggers."""
        state, config, accelerator = self.state, self.config, self.accelerator
        if self.last_logged is not None:
            self._read_losses()
        metrics = evaluate(accelerator.unwrap_model(self.model), self.val_arrays, config.eval_batch_size, accelerator)
        self.last_eval_step = state.global_step
        metric = metrics["auc"] if math.isfinite(metrics["auc"]) else -metrics["loss"]
        improved = metric > state.best_metric
        if improved:
            state.best_metric, state.best_step, state.evals_since_best = metric, state.global_step, 0
            self._save_final()
        else:
            state.evals_since_best += 1
        state.history.append(
            {
                "step": state.global_step,
                "epoch": state.epoch,
                **{f"val_{k}": v for k, v in metrics.items()},
                **self.running,
            }
        )
        if accelerator.is_main_process:
            logger.info(
                "step %d: val loss %.4f acc %.4f f1 %.4f auc %.4f%s",
                state.global_step,
                metrics["loss"],
                metrics["accuracy"],
                metrics["f1"],
                metrics["auc"],
                " (best)" if improved else "",
            )
        return config.patience > 0 and state.evals_since_best >= config.patience

    def _save_final(self) -> None:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        state_dict = None
        if self.deepspeed_plugin is not None:
            # ZeRO-3 shards the weights themselves: every rank takes part in gathering them. Under ZeRO-1/2 each
            # weight is a view into one flat buffer, which safetensors refuses to save: each gets its own copy.
            state_dict = accelerator.get_state_dict(self.model)
            # a collective too: every rank gathers, whether or not get_state_dict handed it the weights
            fp32_weights = _deepspeed_fp32_weights(accelerator.unwrap_model(self.model))
            if state_dict is not None:
                state_dict = {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()} | fp32_weights
        if accelerator.is_main_process:
            self.task.save_final(accelerator.unwrap_model(self.model), self.final_dir, state_dict)
            ckpt.commit_final(self.final_dir, self.state)
        accelerator.wait_for_everyone()

    def _finish(self) -> None:
        """The last evaluation (unless this step had one), final/, the summary; ends the accelerator."""
        state, accelerator = self.state, self.accelerator
        if self.last_eval_step != state.global_step:
            self._evaluate()
        if not self.final_dir.exists():
            self._save_final()
        elapsed = time.perf_counter() - self.start_time
        sequences = state.sequences_seen - self.start_sequences
        steps = state.global_step - self.start_step
        line = (
            summary_line(f"train {self.task.name}", state.global_step, elapsed, "steps")
            + f", {sequences / max(elapsed, 1e-9):,.1f} sequences/s; per step: {self.timer.describe(steps)}"
        )
        if accelerator.is_main_process:
            atomic_write_json(self.summary_path, self._summary(elapsed, sequences, steps, line))
            logger.info(line)
        accelerator.wait_for_everyone()
        accelerator.end_training()

    def _summary(self, elapsed: float, sequences: int, steps: int, line: str) -> dict:
        state = self.state
        return {
            "task": self.task.name,
            "complete": True,
            "final_dir": str(self.final_dir),
            "global_step": state.global_step,
            "total_steps": self.total_steps,
            "best_step": state.best_step,
            "best_val_auc": next((h["val_auc"] for h in state.history if h["step"] == state.best_step), None),
            "stopped_early": state.stopped_early,
            "train_seconds": round(elapsed, 3),
            "sequences_per_second": round(sequences / max(elapsed, 1e-9), 3),
            "step_milliseconds": self.timer.per_step(steps),
            "summary": line,
            "history": state.history,
        }
