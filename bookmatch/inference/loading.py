"""Which kind of model a folder holds, on which device, and loading it with errors a user can act on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bookmatch.errors import BookmatchError, InputError, ModelLoadError, first_line

BI_ENCODER = "bi-encoder"
CROSS_ENCODER = "cross-encoder"


def detect_model_kind(model_dir: str | os.PathLike) -> str:
    """ "bi-encoder" or "cross-encoder", from the files `save_pretrained` wrote."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model folder {model_dir} does not exist: pass the `final/` folder written by `bookmatch train`"
        )
    config_path = model_dir / "bookmatch_config.json"
    if config_path.exists():
        try:
            model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type", "bi_encoder")
        except (OSError, ValueError, AttributeError) as err:
            raise ModelLoadError(f"{config_path} is not valid JSON ({err}); re-save the model") from err
        return CROSS_ENCODER if "cross" in str(model_type) else BI_ENCODER
    if (model_dir / "config.json").exists():
        if _looks_like_sequence_classifier(model_dir / "config.json"):
            return CROSS_ENCODER
        # A bare encoder's config.json (e.g. a bi-encoder that lost its bookmatch_config.json): calling it a
        # cross-encoder would send the user after the wrong problem.
        raise ModelLoadError(
            f"{model_dir} has no bookmatch_config.json and its config.json is not a sequence classifier: the folder is "
            "incomplete; pass the whole `final/` folder written by `bookmatch train` (or re-save the model)"
        )
    raise ModelLoadError(
        f"{model_dir} holds no model (no bookmatch_config.json or config.json): pass the `final/` folder written by `bookmatch train`"
    )


def _looks_like_sequence_classifier(config_path: Path) -> bool:
    """Whether a Hugging Face config.json describes a 2-label sequence classifier (a cross-encoder)."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    architectures = config.get("architectures")
    if architectures:
        return any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures)
    # No architectures recorded: fall back on the label count of a 2-way head.
    id2label = config.get("id2label")
    return config.get("num_labels") == 2 or (isinstance(id2label, dict) and len(id2label) == 2)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | None) -> str:
    """The device to load on: `device`, checked, or cuda when available. A bad name or an absent GPU is an
    input error, not a damaged model folder."""
    import torch

    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"--device {device!r} is not a device torch knows: use cpu, cuda or cuda:N") from err
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise InputError(
            f"--device {device}: no such CUDA GPU is visible here ({torch.cuda.device_count()} found); use --device cpu"
        )
    return device


def load_bi_encoder(model_dir: str | os.PathLike, device: str | None = None):
    from bookmatch.models.bi_encoder import BiEncoder

    return _load(BiEncoder, BI_ENCODER, model_dir, device, "model folder", "bookmatch train")


def load_cross_encoder(model_dir: str | os.PathLike, device: str | None = None):
    from bookmatch.models.cross_encoder import CrossEncoder

    return _load(CrossEncoder, CROSS_ENCODER, model_dir, device, "cross-encoder folder", "bookmatch train cross")


def _load(
    model_class, kind: str, model_dir: str | os.PathLike, device: str | None, folder_name: str, train_command: str
):
    """`model_class.from_pretrained` on a checked device, every failure as one ModelLoadError line."""
    device = resolve_device(device)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"{folder_name} {model_dir} does not exist: pass the `final/` folder written by `{train_command}`"
        )
    _check_commit(model_dir)
    try:
        return model_class.from_pretrained(model_dir, device=device)
    except BookmatchError:
        raise
    except Exception as err:  # shape mismatches, truncated tokenizer files...: all mean a damaged folder
        raise ModelLoadError(
            f"cannot load the {kind} in {model_dir}: {first_line(err)}; re-save or re-train the model"
        ) from err


def _check_commit(model_dir: Path) -> None:
    """A folder saved by training carries a commit manifest: if it does, every listed file must verify (a cut or
    stale copy, e.g. from a bucket, is refused before it is read). Folders without one load as before."""
    from bookmatch.artifacts import COMMIT_NAME, verify

    if (model_dir / COMMIT_NAME).exists():
        verdict = verify(model_dir)
        if not verdict:
            raise ModelLoadError(f"model folder {model_dir} is damaged ({verdict.reason}); copy it again, or re-train")
