"""Which floating-point precision a device computes fast, shared by training and embedding.

bf16 pays only where the hardware computes it natively: a bf16-capable GPU, or a CPU with AVX512-BF16 or AMX
(oneDNN's probe). Elsewhere bf16 autocast is emulated and slower than fp32.
"""

from __future__ import annotations

import contextlib

PRECISIONS = ("no", "bf16", "fp16", "auto")


def native_bf16(use_cuda: bool) -> bool:
    """Whether the device computes bf16 matmuls natively."""
    import torch

    if use_cuda:
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private oneDNN probe: absent in some builds
        return False


def check_precision(value: str, name: str = "precision") -> None:
    """ValueError naming the option unless `value` is one of PRECISIONS (configs call this in __post_init__)."""
    if value not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {value!r}")


def resolve_mixed_precision(value: str, use_cuda: bool) -> str:
    """ "auto" -> "bf16" where native, else "no"; any other value as given."""
    check_precision(value)
    if value != "auto":
        return value
    return "bf16" if native_bf16(use_cuda) else "no"


def autocast(precision: str, device_type: str):
    """An autocast context for a resolved precision ("no": a no-op context)."""
    import torch

    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
