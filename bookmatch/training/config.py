"""Training configs: the tuned defaults of the original design; YAML (`--config`) and CLI flags override them."""

from __future__ import annotations

from dataclasses import dataclass

from bookmatch.precision import check_precision


@dataclass
class TrainConfig:
    """Options shared by the cross-encoder teacher and the contrastive bi-encoder."""

    data: str = ""  # folder written by `bookmatch prepare` (DatasetDict + manifest.json)
    out: str = ""  # run folder: checkpoint-<step>/, final/, config.yaml, train_summary.json
    model: str = "roberta-large"  # backbone name or local folder (resolved offline unless local_files_only=False)
    local_files_only: bool = True
    epochs: int = 3
    batch_size: int = 8  # pairs per device per micro-batch
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    warmup_max_fraction: float = 0.1  # short runs: warmup is capped at this fraction of the total steps
    max_steps: int = 0  # > 0 stops after this many optimizer steps
    max_seq_length: int = 256
    max_grad_norm: float = 1.0
    # no | bf16 | fp16 | auto: bf16 where the device computes it natively (a bf16-capable GPU; a CPU with
    # AVX512-BF16 or AMX, where a MiniLM training step measured 1.6x faster), else no. Saved resolved.
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    grad_accum: int = 1
    eval_steps: int = 500
    eval_max_pairs: int = 2000  # validation pairs per evaluation (a fixed seeded subsample)
    eval_batch_size: int = 64
    save_steps: int = 500
    save_total_limit: int = 2
    patience: int = 5  # evaluations without a better validation AUC before stopping; 0 disables
    seed: int = 42
    cpu: bool = False
    sample: int = 0  # > 0: train on a seeded subsample of this many training pairs
    resume: bool = False
    group_by_length: bool = True
    num_workers: int = 0  # data-loader worker processes
    preprocess_workers: int = 0  # processes for tokenizing + style features (datasets.map num_proc); 0: in-process
    log_steps: int = 50
    # Learning rate of the randomly initialised heads (classifier, projection); 0 = `lr`. Short runs need the
    # heads to move much faster than the pretrained encoder.
    head_lr: float = 0.0

    def __post_init__(self) -> None:
        check_precision(self.mixed_precision, "mixed_precision")
        for name in ("batch_size", "grad_accum", "eval_steps", "save_steps", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class CrossTrainConfig(TrainConfig):
    """The cross-encoder teacher: both passages in one sequence."""

    epochs: int = 3
    lr: float = 2e-5
    max_seq_length: int = 512


@dataclass
class ContrastiveTrainConfig(TrainConfig):
    """The Siamese bi-encoder: pair cross-entropy + SupCon on the projections (+ distillation, topic terms)."""

    epochs: int = 5
    lr: float = 1e-5
    ce_weight: float = 1.0
    contrastive_weight: float = 0.2
    temperature: float = 0.05
    projection_dim: int = 256
    pooling: str = "mean"
    side_features: str = "style_v1"
    lexical_buckets: int = 4096  # lexical signature per side (0 = off); see BiEncoderConfig
    lexical_top_k: int = 64
    name_top_k: int = 32  # names signature per side (0 = off; needs lexical_buckets)
    pooled_cosine: bool = True  # the pooled vectors' cosine as one classifier input
    long_texts: str = "windows"  # at inference: "windows" reads a long text whole, window by window; or "truncate"
    # Which max_seq_length tokens of a longer training text the encoder reads: "first", or "random" (an offset
    # drawn per pair and side from the seed, so training sees every part of a passage, as whole-passage
    # inference does). Validation always reads the first window.
    training_window: str = "first"
    # > 0: each batch (per process) takes its pairs from this many authors (the author of a pair's first book,
    # the folder part of its book id), so SupCon's in-batch negatives include that author's other books;
    # 0: batches drawn at random over all pairs.
    authors_per_batch: int = 0
    teacher: str = ""  # cross-encoder folder to distil from ('' = no distillation)
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    teacher_batch_size: int = 64
    topic_adversary: bool = False
    topic_adversary_weight: float = 0.1
    topic_adversary_lambda: float = 0.1
    independence_weight: float = 0.0
    cached_contrastive: bool = False  # GradCache: a large contrastive batch in mini-batches of `mini_batch_size`
    mini_batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.authors_per_batch < 0:
            raise ValueError(f"authors_per_batch must be >= 0 (0: random batches), got {self.authors_per_batch}")
