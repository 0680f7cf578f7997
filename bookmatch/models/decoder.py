"""Decoder backbones (any Hugging Face causal LM) under the bi-encoder: EOS appended, frozen base, LoRA adapters.

A decoder reads left to right, so only its last token has seen the whole text: the bi-encoder pools that token,
and the tokenizer is made to append the EOS token to every text (`append_eos`), so the pooled state is always the
one after the end of the text, whichever path tokenized it (training arrays, random training windows, inference
windows: all of them go through the tokenizer's post-processor or `BiEncoder.special_affixes`).

The base weights are loaded in `base_dtype` (bf16 by default) and frozen; PEFT LoRA adapters on
`lora_target_modules` train in fp32 with the heads. A saved folder holds the heads in `model.safetensors` and the
adapter as a PEFT folder in `adapter/`, and names its base (`backbone`), which loads offline like any backbone;
a folder saved with `merge=True` holds the merged weights instead and loads without PEFT or the base.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bookmatch.errors import ModelLoadError

ADAPTER_FOLDER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
BI_ENCODER_CONFIG = "bookmatch_config.json"


def is_causal_lm_config(config) -> bool:
    """Whether a Hugging Face config describes a decoder-only model (Llama, Qwen2, GPT-2...): its type has a
    causal-LM head and no masked-LM head (BERT-likes have both), or it says it is a decoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return causal or bool(getattr(config, "is_decoder", False))


def resolve_backbone_kind(kind: str, config) -> str:
    """ "encoder" or "decoder": `kind` as chosen, or (for "auto") what the backbone's config says."""
    if kind != "auto":
        return kind
    return "decoder" if is_causal_lm_config(config) else "encoder"


# ---------------------------------------------------------------------------------------------------------------
# the tokenizer: EOS appended, right padding
# ---------------------------------------------------------------------------------------------------------------


def appends_eos(tokenizer) -> bool:
    """Whether the tokenizer puts its EOS token after a text (and the EOS is not part of the text itself)."""
    eos = tokenizer.eos_token_id
    full = tokenizer("word")["input_ids"]
    plain = tokenizer("word", add_special_tokens=False)["input_ids"]
    return eos is not None and len(full) > len(plain) and full[-1] == eos


def append_eos(tokenizer, where: str | os.PathLike) -> None:
    """Make `tokenizer` append its EOS token to every text (in place, kept by `save_pretrained`), pad on the
    right, and pad with EOS when it has no pad token. Raises ModelLoadError when it cannot."""
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(
            f"the tokenizer in {where} has no EOS token: a decoder backbone is pooled at the EOS appended to each "
            "text; set eos_token in its tokenizer_config.json"
        )
    tokenizer.padding_side = "right"  # positions follow the tokens, so padding must not come first
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # pooling reads the attention mask, never the pad id
    if appends_eos(tokenizer):
        return
    _template_with_eos(tokenizer)
    _set_eos_flag(tokenizer)
    if not appends_eos(tokenizer):
        raise ModelLoadError(f"cannot make the tokenizer in {where} append its EOS token {tokenizer.eos_token!r}")


def _set_eos_flag(tokenizer) -> None:
    """Llama/Gemma tokenizers rebuild their post-processor from `add_bos_token`/`add_eos_token` when loaded: set
    the flag too where it gives the same tokens, so a saved tokenizer still appends EOS when loaded elsewhere
    (sentence-transformers, after `bookmatch export`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(tokenizer, "add_eos_token") or getattr(tokenizer, "add_eos_token", False):
        return
    wanted, template = tokenizer("word")["input_ids"], backend.post_processor
    try:
        tokenizer.add_eos_token = True
        if tokenizer("word")["input_ids"] == wanted:
            return
        tokenizer.add_eos_token = False
    except (AttributeError, TypeError, ValueError):
        pass
    backend.post_processor = template


def _template_with_eos(tokenizer) -> None:
    """Replace a fast tokenizer's post-processor by one that adds its current special tokens, then EOS."""
    from tokenizers import processors

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    full = tokenizer("word")["input_ids"]
    plain = tokenizer("word", add_special_tokens=False)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if start is None:
        return
    prefix, suffix = full[:start], full[start + len(plain) :] + [tokenizer.eos_token_id]
    names = dict(zip(prefix + suffix, tokenizer.convert_ids_to_tokens(prefix + suffix)))
    before, after = [names[i] for i in prefix], [names[i] for i in suffix]
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join([*before, "$A", *after]),
        pair=" ".join([*before, "$A", *after, "$B:1", *(f"{name}:1" for name in after)]),
        special_tokens=[(name, token_id) for token_id, name in names.items()],
    )


# ---------------------------------------------------------------------------------------------------------------
# the model: frozen base + LoRA
# ---------------------------------------------------------------------------------------------------------------


def lora_config(settings):
    """PEFT's LoraConfig from the bi-encoder's settings (lora_r, lora_alpha, lora_dropout, lora_target_modules)."""
    from peft import LoraConfig

    targets = [name.strip() for name in settings.lora_target_modules.split(",") if name.strip()]
    return LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout, target_modules=targets
    )


def adapter_source(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(the PEFT adapter folder, the bi-encoder folder whose heads go with it or None) for `--adapter-path`: a
    bi-encoder folder saved by training (its `adapter/` and heads), or a bare PEFT adapter folder."""
    path = Path(path)
    if (path / ADAPTER_FOLDER / ADAPTER_CONFIG).exists():
        return path / ADAPTER_FOLDER, path if (path / BI_ENCODER_CONFIG).exists() else None
    if (path / ADAPTER_CONFIG).exists():
        return path, None
    raise ModelLoadError(
        f"adapter path {path} holds no LoRA adapter (no {ADAPTER_CONFIG} in it or in {ADAPTER_FOLDER}/): pass the "
        "final/ folder of a decoder bi-encoder trained without merge_lora, or a PEFT adapter folder"
    )


def build_decoder(
    path: str | os.PathLike, settings, local_files_only: bool = True, adapter: Path | None = None, trainable=True
):
    """The base model in `settings.base_dtype`, frozen, with LoRA adapters: new ones from the settings, or those
    saved in `adapter` (then the settings are updated to the adapter's own r, alpha, dropout and targets)."""
    try:
        from peft import PeftModel, get_peft_model
    except ImportError as err:
        raise ModelLoadError(
            f"{path} is a decoder backbone, trained with LoRA adapters: install peft (pip install 'bookmatch[lora]')"
        ) from err
    from transformers import AutoModel

    base = AutoModel.from_pretrained(path, local_files_only=local_files_only, dtype=getattr(torch, settings.base_dtype))
    base.requires_grad_(False)
    if adapter is None:
        return get_peft_model(base, lora_config(settings))
    encoder = PeftModel.from_pretrained(base, str(adapter), is_trainable=trainable)
    lora = encoder.peft_config["default"]
    settings.lora_r, settings.lora_alpha, settings.lora_dropout = lora.r, float(lora.lora_alpha), lora.lora_dropout
    settings.lora_target_modules = ",".join(sorted(lora.target_modules))
    return encoder


def save_adapter(encoder, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """The adapter as a PEFT folder; `state_dict`: the encoder's weights to take it from (keys of `encoder`)."""
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    encoder.save_pretrained(str(folder), save_embedding_layers=False, **kwargs)


def merged(encoder):
    """A plain copy of the base model with the adapters folded into its weights (`encoder` is left as it is)."""
    import copy

    return copy.deepcopy(encoder).merge_and_unload()
