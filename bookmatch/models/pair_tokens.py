"""Token ids of text pairs for a cross-encoder, each distinct text tokenized once.

A prepared split reuses its chunks across pairs (the whole corpus: 51,396 sides, 35,778 distinct texts), and
tokenizing is most of a CPU's share of teacher scoring. So each distinct text is tokenized alone, and the pair
is then trimmed and framed by the same rules as the tokenizer's own pair encoding: Hugging Face tokenizers
encode the two sides separately, cut them to fit by 'longest_first' (`tokenizers` utils/truncation.rs), and
add the special tokens of the post-processor's pair template. Tests compare the result with the tokenizer's
own pair encoding, token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Two texts that every tokenizer turns into a few ordinary tokens each, to read the pair template off.
_PROBE = ("probe text one", "probe text two")


@dataclass(frozen=True)
class PairTemplate:
    """The special tokens around and between the two sides, per output column: `parts[name]` is (before first,
    between, after second) as lists of values, `sides[name]` the value a column takes on each side's tokens
    (None: the column holds the tokens themselves, as input_ids does)."""

    parts: dict[str, tuple[list[int], list[int], list[int]]]
    sides: dict[str, tuple[int | None, int | None]]

    @property
    def special_count(self) -> int:
        return sum(len(part) for part in self.parts["input_ids"])

    def frame(self, first: list[int], second: list[int]) -> dict[str, list[int]]:
        row = {}
        for name, (before, between, after) in self.parts.items():
            side_a, side_b = self.sides[name]
            a = first if side_a is None else [side_a] * len(first)
            b = second if side_b is None else [side_b] * len(second)
            row[name] = before + a + between + b + after
        row["attention_mask"] = [1] * len(row["input_ids"])
        return row


def pair_template(tokenizer) -> PairTemplate | None:
    """The tokenizer's pair template, read off one probe pair; None when the pair encoding does not have the
    shape [specials] first [specials] second [specials] with constant per-side values (then the caller uses the
    tokenizer's own pair encoding)."""
    encoded = tokenizer(*_PROBE, return_special_tokens_mask=True)
    special = encoded["special_tokens_mask"]
    runs = _content_runs(special)
    sides = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in _PROBE]
    if len(runs) != 2 or [encoded["input_ids"][slice(*run)] for run in runs] != sides:
        return None
    (a_start, a_stop), (b_start, b_stop) = runs
    parts, values = {}, {}
    for name, column in encoded.items():
        if name in ("attention_mask", "special_tokens_mask"):
            continue
        a, b = column[a_start:a_stop], column[b_start:b_stop]
        if name != "input_ids" and (len(set(a)) != 1 or len(set(b)) != 1):
            return None
        parts[name] = (column[:a_start], column[a_stop:b_start], column[b_stop:])
        values[name] = (None, None) if name == "input_ids" else (a[0], b[0])
    return PairTemplate(parts, values)


def _content_runs(special_mask: Sequence[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for position, is_special in enumerate([*special_mask, 1]):
        if not is_special and start is None:
            start = position
        elif is_special and start is not None:
            runs.append((start, position))
            start = None
    return runs


def longest_first_lengths(first: int, second: int, budget: int) -> tuple[int, int]:
    """How many tokens of each side 'longest_first' keeps within `budget` (tokenizers' truncation.rs): the shorter
    side whole when the longer still fits what is left, else each half (the longer side gets an odd budget's
    extra token; the second side when both are equally long)."""
    if first + second <= budget:
        return first, second
    short, long_ = min(first, second), max(first, second)
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short = budget // 2
        long_ = short + budget % 2
    keep_first, keep_second = (long_, short) if first > second else (short, long_)
    return min(first, keep_first), min(second, keep_second)


def tokenize_pairs(tokenizer, texts1: Sequence[str], texts2: Sequence[str], max_length: int) -> dict[str, list]:
    """The tokenizer's pair encoding (`truncation='longest_first'`, `max_length`) of each aligned pair, unpadded,
    with each distinct text tokenized once."""
    template = pair_template(tokenizer)
    if template is None:
        return dict(tokenizer(list(texts1), list(texts2), truncation="longest_first", max_length=max_length))
    distinct = list(dict.fromkeys([*texts1, *texts2]))
    ids = dict(zip(distinct, tokenizer(distinct, add_special_tokens=False, verbose=False)["input_ids"]))
    budget = max_length - template.special_count
    columns: dict[str, list] = {name: [] for name in [*template.parts, "attention_mask"]}
    for text1, text2 in zip(texts1, texts2):
        first, second = ids[text1], ids[text2]
        keep_first, keep_second = longest_first_lengths(len(first), len(second), budget)
        for name, values in template.frame(first[:keep_first], second[:keep_second]).items():
            columns[name].append(values)
    return columns
