"""The bi-encoder's settings as a user chooses them, declared once with their tuned defaults.

Apart from `bi_encoder.py` so that reading them (the training config, the CLI's generated options) does not
import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from bookmatch.config import setting
from bookmatch.text.style import SIDE_FEATURE_SETS

POOLING_MODES = ("mean", "cls", "max", "last")
LONG_TEXT_MODES = ("windows", "truncate")
SCORING_MODES = ("cosine", "maxsim")
BACKBONE_KINDS = ("auto", "encoder", "decoder")
BASE_DTYPES = ("bfloat16", "float32")


@dataclass
class BiEncoderSettings:
    """The bi-encoder's architecture as a user chooses it, with the tuned defaults: declared once, here. The
    contrastive training config inherits these fields (so YAML, `--set` and the CLI reach them), and a built
    model's BiEncoderConfig carries them with what the build fills in."""

    projection_dim: int = setting(256, "Width of the contrastive projection head (SupCon space).", ge=1)
    pooling: str = setting(
        "mean",
        "Pooling of the encoder's token states (a decoder backbone always pools its last token, the EOS).",
        choices=POOLING_MODES,
    )
    side_features: str = setting(
        "style_v1", "Per-text feature set beside the pooled vector.", choices=tuple(SIDE_FEATURE_SETS)
    )
    # Lexical signature per side (0 = off): the `lexical_top_k` heaviest IDF-weighted content-word buckets of
    # each text; the classifier gets the two signatures' cosine. Names, places and rare words shared by two
    # passages are the strongest same-book evidence, and a truncated, mean-pooled embedding dilutes them.
    lexical_buckets: int = setting(4096, "Hash buckets of the per-side lexical signature (0: off).", ge=0)
    lexical_top_k: int = setting(64, "Heaviest content-word buckets kept per text.", ge=1)
    # A second signature over proper names (capitalised words not at a sentence start), same bucket count.
    # Characters' names are what two passages of one novel share most reliably.
    name_top_k: int = setting(
        32, "Heaviest proper-name buckets kept per text (0: no names signature; needs lexical_buckets).", ge=0
    )
    # The MLP otherwise has to learn a dot product from [u, v, |u-v|, u*v], which takes far more steps than a
    # short run has.
    pooled_cosine: bool = setting(True, "Give the classifier the cosine of the two pooled vectors.")
    # Training always reads the first window (cheap); reading the rest of a 14-sentence passage at inference
    # raised validation AUC by 0.03 (BENCHMARKS.md).
    long_texts: str = setting(
        "windows",
        "Texts longer than max_seq_length at inference: windows = read whole, "
        "window by window (averaged by tokens); truncate = the first window only.",
        choices=LONG_TEXT_MODES,
    )
    # Late interaction (ColBERT): each token keeps its own vector (the projection head applied per token), a
    # pair's similarity is the symmetric mean MaxSim of its two texts' tokens (models/late_interaction.py);
    # SupCon then contrasts MaxSim instead of pooled cosines, and the classifier gets the pair's MaxSim as one
    # more scalar. Costs memory per text (its tokens' vectors) and a token-by-token product per pair.
    scoring: str = setting(
        "cosine",
        "Text similarity in the contrastive loss and the classifier: cosine = of the pooled projections; "
        "maxsim = late interaction, ColBERT's MaxSim over per-token projections.",
        choices=SCORING_MODES,
    )
    # A decoder (any Hugging Face causal LM) reads each text with an EOS token appended and is pooled at that
    # token; its base weights stay frozen (in base_dtype) and LoRA adapters train in fp32 (bookmatch/models/decoder.py).
    backbone_kind: str = setting(
        "auto",
        "Backbone kind: encoder (BERT-like, fine-tuned whole), decoder (a causal LM: frozen base + LoRA, "
        "last-token pooling), or auto = decoder when the backbone's config is a causal LM.",
        choices=BACKBONE_KINDS,
    )
    lora_r: int = setting(8, "LoRA rank of the decoder's adapters.", ge=1)
    lora_alpha: float = setting(32.0, "LoRA alpha (the adapters' update is scaled by alpha / r).", gt=0)
    lora_dropout: float = setting(0.1, "Dropout on the LoRA adapters' input.", ge=0, le=1)
    lora_target_modules: str = setting(
        "q_proj,v_proj", "Comma-separated names of the decoder's linear layers that get LoRA adapters."
    )
    base_dtype: str = setting(
        "bfloat16", "Dtype of the decoder's frozen base weights (adapters and heads stay fp32).", choices=BASE_DTYPES
    )


# What a model folder saved before a setting existed meant by leaving it out: the feature was not there.
ABSENT_FROM_OLD_FOLDERS = {"lexical_buckets": 0, "name_top_k": 0, "pooled_cosine": False}
