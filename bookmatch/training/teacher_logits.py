"""The teacher's logits over the training pairs, for distillation: computed once per teacher and dataset, cached
beside the dataset's features (`features.cache_folder`), so a later run on the same data reuses them.

Pairs run in length-sorted batches (a budget of padded tokens per batch, so short pairs go in larger ones),
under inference mode, with the next blocks of pairs tokenized on background threads, or read from the pair tokens
the cross-encoder's own training stage cached for the same split; under bf16 (and fp16 on a GPU) the teacher's
weights are cast whole (autocast would re-cast every weight in every batch). Under several processes each rank
scores a contiguous share of the pairs and the shares are gathered in rank order.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bookmatch.models.batching import (
    distributed_rank,
    grouped_map,
    length_sorted_batches,
    model_attention_mask,
    ordered_map,
    pad_ids,
    rank_slice,
    run_batches,
    thread_local_copy,
    tokenize_threads,
)
from bookmatch.models.cross_encoder import CrossEncoder
from bookmatch.progress import progress_bar, summary_line
from bookmatch.training.data import texts_fingerprint
from bookmatch.training.features import UNREADABLE, PairArrays, arrays_path, cached_file, cross_arrays_key

logger = logging.getLogger(__name__)

TOKENIZE_BLOCK = 8192  # at most this many pairs tokenized (and length-sorted) together
MIN_TOKENIZE_BLOCK = 256


def teacher_logits(config, train_split, accelerator, cache: Path, fingerprint: str | None = None) -> np.ndarray:
    """The teacher's (N, 2) logits over the training pairs, computed once and cached in the folder `cache`;
    `fingerprint`: the split's `texts_fingerprint`, where the caller has it.

    The cache key covers the teacher (its weights' size and time, its settings files), the precision and the
    exact pair texts, so a changed teacher or data set never reuses stale logits. Ranks score contiguous shares
    and gather the results.
    """
    from accelerate.utils import gather_object

    teacher_dir = Path(config.teacher)
    fingerprint = fingerprint or texts_fingerprint(train_split)
    key = _cache_key(teacher_dir, accelerator.mixed_precision, fingerprint)

    def score() -> np.ndarray:
        teacher = CrossEncoder.from_pretrained(teacher_dir, device=accelerator.device)
        start = time.perf_counter()
        rows = rank_slice(len(train_split), accelerator.process_index, accelerator.num_processes)
        tokens = cross_stage_tokens(cache, fingerprint, teacher, rows)
        # one read of each column (a per-row read of an Arrow dataset costs a conversion each)
        texts1, texts2 = (
            list(train_split["text1"])[rows.start : rows.stop],
            list(train_split["text2"])[rows.start : rows.stop],
        )
        mine = score_pairs(
            teacher, texts1, texts2, config.teacher_batch_size, accelerator.mixed_precision, tokens=tokens
        )
        logits = np.concatenate(gather_object([mine]), axis=0).astype(np.float32, copy=False)
        if accelerator.is_main_process:
            logger.info(summary_line("teacher logits", len(train_split), time.perf_counter() - start, "pairs"))
        return logits

    path = Path(cache) / f"teacher_logits-{key}.npy"
    return cached_file(path, np.load, score, _npy_bytes, "teacher logits", accelerator.is_main_process, logger)


def cross_stage_tokens(
    cache: Path, fingerprint: str, teacher: CrossEncoder, rows: range
) -> Callable[[slice], dict] | None:
    """Where the cross-encoder's training stage cached this split's pair tokens (the same pairs, tokenizer and
    length: the teacher trained on this split), a function giving the token ids of a slice of pairs `rows`;
    else None. Tokenizing is most of a CPU's share of scoring, and what starves a GPU."""
    path = arrays_path(cache, cross_arrays_key(fingerprint, teacher))
    if not path.exists():
        return None
    try:
        sequences = PairArrays.from_npz(path).sequences[""]
    except UNREADABLE as err:
        logger.warning("teacher logits: the cross-encoder's tokens in %s are damaged (%s); tokenizing", path, err)
        return None
    if len(sequences.lengths) < rows.stop:
        return None
    logger.info("teacher logits: reusing the cross-encoder's tokens %s", path)
    matrices = {"input_ids": sequences.ids}
    if sequences.token_types is not None:
        matrices["token_type_ids"] = sequences.token_types

    def block(part: slice) -> dict:
        chosen = range(rows.start + part.start, min(rows.start + part.stop, rows.stop))
        return {name: [m[row, : sequences.lengths[row]].tolist() for row in chosen] for name, m in matrices.items()}

    return block


def _cache_key(teacher_dir: Path, precision: str, texts: str) -> str:
    """What the logits depend on: the teacher's weights (size and time: hashing GBs would cost more than the
    cache saves), its settings files, the precision they are computed in, and the pair texts."""
    digest = hashlib.sha1(f"{teacher_dir.resolve()}|{precision}|{texts}".encode())
    weights = teacher_dir / "model.safetensors"
    if weights.exists():
        digest.update(f"|{weights.stat().st_size}|{weights.stat().st_mtime_ns}".encode())
    for settings in sorted(teacher_dir.glob("*.json")):
        digest.update(settings.read_bytes())
    return digest.hexdigest()[:16]


def _npy_bytes(logits: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, logits)
    return buffer.getvalue()


def score_pairs(
    teacher: CrossEncoder,
    texts1: Sequence[str],
    texts2: Sequence[str],
    batch_size: int = 64,
    precision: str = "no",
    threads: int | None = None,
    tokens: Callable[[slice], dict] | None = None,
) -> np.ndarray:
    """(N, 2) float32 logits of aligned pairs, in input order (`CrossEncoder.predict_logits`, batched for speed).
    `tokens`: where the pairs' token ids were computed already (`cross_stage_tokens`), the ids of a slice of them.

    `batch_size` pairs of the longest length set the budget of padded tokens per batch. Blocks of pairs are
    tokenized on `threads` threads (default: `batching.tokenize_threads()`; each with its own copy of the
    tokenizer), ahead of a GPU (one thread tokenizes ~850 pairs/s of 512 tokens, which leaves it waiting) and
    taking turns with a CPU's forward pass, which uses every core."""
    import torch

    from bookmatch.precision import autocast

    model, device = teacher.model, teacher.device
    model.eval()
    # weights cast whole (autocast would re-cast every weight in every batch: 1.16x slower on a bf16 CPU, logits
    # within 2e-4 of each other); a CPU has no fast fp16, so it keeps fp16 to autocast
    if precision == "bf16" or (device.type == "cuda" and precision == "fp16"):
        model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
        precision = "no"
    pad_id = teacher.tokenizer.pad_token_id or 0
    cuda = device.type == "cuda"
    max_tokens = batch_size * teacher.config.max_seq_length

    threads = threads or tokenize_threads()
    # small enough blocks that the model starts early and every thread has work; big enough to sort by length
    block_size = max(MIN_TOKENIZE_BLOCK, min(TOKENIZE_BLOCK, -(-len(texts1) // (4 * threads))))
    tokenizer = thread_local_copy(teacher.tokenizer)

    def tokenize(first: int) -> tuple[int, dict]:
        part = slice(first, first + block_size)
        if tokens is not None:
            return first, tokens(part)
        return first, teacher.tokenize_pairs(texts1[part], texts2[part], tokenizer=tokenizer())

    def forward(inputs: dict) -> np.ndarray:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        inputs["attention_mask"] = model_attention_mask(model, inputs["attention_mask"])
        with torch.inference_mode(), autocast(precision, device.type):
            return model(**inputs).logits.float().cpu().numpy()

    out = np.zeros((len(texts1), 2), dtype=np.float32)
    counter = progress_bar(len(texts1), "teacher scoring", "pair", disable=distributed_rank()[0] != 0)
    starts = range(0, len(texts1), block_size)
    # a GPU leaves the cores to the tokenizer threads; on a CPU they take turns with the forward pass
    blocks = (
        ordered_map(tokenize, starts, threads, depth=threads + 1) if cuda else grouped_map(tokenize, starts, threads)
    )
    for first, ids in blocks:
        keys = [k for k in ("input_ids", "token_type_ids") if k in ids]

        def make_inputs(index: np.ndarray, ids=ids, keys=keys) -> dict:
            inputs = {}
            for name in keys:
                values, mask = pad_ids(
                    [ids[name][i] for i in index], pad_id if name == "input_ids" else 0, multiple_of=8 if cuda else 1
                )
                inputs[name] = torch.from_numpy(values)
                inputs.setdefault("attention_mask", torch.from_numpy(mask))
            return {k: v.pin_memory() for k, v in inputs.items()} if cuda else inputs

        batches = length_sorted_batches([len(row) for row in ids["input_ids"]], max_tokens, batch_size * 4)
        block = out[first : first + len(ids["input_ids"])]
        run_batches(batches, make_inputs, forward, block, counter=counter)
    counter.close()
    return out
