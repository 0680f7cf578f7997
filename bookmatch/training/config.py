"""Training configs: the tuned defaults of the original design; YAML (`--config`) and CLI flags override them.

Each field is declared once with `setting(default, help, allowed values)`; `bookmatch train` generates its
options from these declarations, and every value is checked when the config is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from bookmatch.config import check_settings, setting
from bookmatch.models.settings import BiEncoderSettings
from bookmatch.precision import PRECISIONS

WINDOWS = ("first", "random")


@dataclass
class TrainConfig:
    """Options shared by the cross-encoder teacher and the contrastive bi-encoder."""

    data: str = setting("", "Folder written by `bookmatch prepare` (DatasetDict + manifest.json).")
    out: str = setting("", "Run folder: checkpoint-<step>/, final/, config.yaml, train_summary.json.")
    model: str = setting(
        "roberta-large",
        "Backbone: Hugging Face name or local folder (resolved offline unless local_files_only is off).",
    )
    local_files_only: bool = setting(True, "Never touch the network for models.")
    epochs: int = setting(3, "Passes over the training pairs.", ge=1)
    batch_size: int = setting(8, "Pairs per device per micro-batch.", ge=1)
    lr: float = setting(2e-5, "Learning rate of the encoder (0 freezes it).", ge=0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", ge=0)
    warmup_steps: int = setting(1000, "Linear warmup steps (capped by warmup_max_fraction of the total).", ge=0)
    warmup_max_fraction: float = setting(
        0.1, "Short runs: warmup is capped at this fraction of the total steps.", ge=0, le=1
    )
    max_steps: int = setting(0, "Stop after this many optimizer steps (0: no limit).", ge=0)
    max_seq_length: int = setting(
        256, "Tokens per text (per side for the bi-encoder, per pair for the cross-encoder).", ge=1
    )
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", gt=0)
    # bf16 where the device computes it natively (a bf16-capable GPU; a CPU with AVX512-BF16 or AMX, where a
    # MiniLM training step measured 1.6x faster), else no. Saved resolved.
    mixed_precision: str = setting(
        "no", "Mixed precision: auto = bf16 where the device computes it natively, else no.", choices=PRECISIONS
    )
    attention_dropout: float | None = setting(
        None,
        "Dropout on the encoder's attention probabilities while training (null: the backbone's own).",
        ge=0,
        le=1,
    )
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass (less memory).")
    compile: bool = setting(False, "torch.compile the model.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", ge=1)
    eval_steps: int = setting(500, "Optimizer steps between validations.", ge=1)
    eval_max_pairs: int = setting(2000, "Validation pairs per evaluation (a fixed seeded subsample; 0: all).", ge=0)
    eval_batch_size: int = setting(64, "Pairs per forward pass at validation.", ge=1)
    save_steps: int = setting(500, "Optimizer steps between checkpoints.", ge=1)
    save_total_limit: int = setting(2, "Recent checkpoints kept (0: all).", ge=0)
    patience: int = setting(5, "Evaluations without a better validation AUC before stopping (0: off).", ge=0)
    seed: int = setting(42, "Seed for weights, sampling and data order.", ge=0)
    cpu: bool = setting(False, "Train on the CPU even when a GPU is present.")
    sample: int = setting(0, "Train on a seeded subsample of this many training pairs (0: all).", ge=0)
    resume: bool = setting(False, "Continue exactly from the latest checkpoint in the run folder.")
    group_by_length: bool = setting(True, "Batch pairs of similar length together (less padding).")
    num_workers: int = setting(0, "Data-loader worker processes.", ge=0)
    preprocess_workers: int = setting(0, "Processes for tokenizing + style features (0: in-process).", ge=0)
    log_steps: int = setting(50, "Optimizer steps between log lines (0: none).", ge=0)
    # Short runs need the heads to move much faster than the pretrained encoder.
    head_lr: float = setting(
        0.0, "Learning rate of the randomly initialised heads (classifier, projection); 0: lr.", ge=0
    )

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class CrossTrainConfig(TrainConfig):
    """The cross-encoder teacher: both passages in one sequence."""

    epochs: int = setting(3, "Passes over the training pairs.", ge=1)
    lr: float = setting(2e-5, "Learning rate of the encoder (0 freezes it).", ge=0)
    max_seq_length: int = setting(512, "Tokens per pair (both passages in one sequence).", ge=1)


@dataclass
class ContrastiveTrainConfig(BiEncoderSettings, TrainConfig):
    """The Siamese bi-encoder: pair cross-entropy + SupCon on the projections (+ distillation, topic terms).

    The model's own settings (projection_dim, pooling, side_features, the lexical and names signatures,
    pooled_cosine, long_texts) are the fields of `BiEncoderSettings`, inherited with their one default."""

    epochs: int = setting(5, "Passes over the training pairs.", ge=1)
    lr: float = setting(1e-5, "Learning rate of the encoder (0 freezes it).", ge=0)
    # 0 where the backbone has 0.1: a CPU's fused attention kernel takes no dropout, so a dropout of 0.1 falls
    # back to materialised attention (a MiniLM step at 16 pairs x 128 tokens 1.1x slower in bf16, 1.2x in fp32;
    # the tiny test encoder's 2.1x). Quality held in cpu-small: test AUC 0.882 vs 0.877 calibrated,
    # validation_pairs 0.865 vs 0.865 (BENCHMARKS.md).
    attention_dropout: float | None = setting(
        0.0,
        "Dropout on the encoder's attention probabilities while training (null: the backbone's own).",
        ge=0,
        le=1,
    )
    ce_weight: float = setting(1.0, "Weight of the pair cross-entropy loss.", ge=0)
    contrastive_weight: float = setting(0.2, "Weight of the SupCon loss on the projections (0: off).", ge=0)
    temperature: float = setting(0.05, "SupCon temperature.", gt=0)
    # "random": an offset drawn per pair and side from the seed, so training sees every part of a passage, as
    # whole-passage inference does. Validation always reads the first window.
    training_window: str = setting(
        "first",
        "Which max_seq_length tokens of a longer training text are read: the "
        "first, or a window at a seeded random offset.",
        choices=WINDOWS,
    )
    # Batches by author: the author of a pair's first book, the folder part of its book id.
    authors_per_batch: int = setting(
        0,
        "Each batch takes its pairs from this many authors, so SupCon's in-batch "
        "negatives include an author's other books (0: random batches).",
        ge=0,
    )
    teacher: str = setting("", "Cross-encoder folder to distil from ('': no distillation).")
    distill_weight: float = setting(0.5, "Weight of the distillation loss.", ge=0)
    distill_temperature: float = setting(2.0, "Distillation temperature.", gt=0)
    teacher_batch_size: int = setting(64, "Pairs per forward pass of the teacher.", ge=1)
    topic_adversary: bool = setting(False, "Gradient-reversal topic classifier on the pooled vectors.")
    topic_adversary_weight: float = setting(0.1, "Weight of the topic adversary's loss.", ge=0)
    topic_adversary_lambda: float = setting(0.1, "Gradient-reversal strength of the topic adversary.", ge=0)
    independence_weight: float = setting(0.0, "Weight of the embedding/topic independence loss (0: off).", ge=0)
    cached_contrastive: bool = setting(
        False, "GradCache: a large contrastive batch in mini-batches of mini_batch_size."
    )
    mini_batch_size: int = setting(8, "GradCache mini-batch size.", ge=1)
    # Two-stage training of a decoder: a second run continues from the first run's adapter (and heads), typically
    # at a lower learning rate.
    adapter_path: str = setting(
        "", "Decoder backbones: continue from this LoRA adapter (a decoder bi-encoder's final/ or a PEFT folder)."
    )
    merge_lora: bool = setting(
        False, "Decoder backbones: final/ holds the weights with the adapters merged in (loads without PEFT)."
    )
