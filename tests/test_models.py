"""BiEncoder / CrossEncoder save-load, style features, pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bookmatch.errors import ModelLoadError
from bookmatch.models.bi_encoder import BiEncoder, BiEncoderConfig
from bookmatch.models.cross_encoder import CrossEncoder
from bookmatch.models.pooling import pool
from bookmatch.text.style import STYLE_FEATURE_NAMES, get_side_feature_set, raw_style_statistics, style_features

TEXTS = [
    "It was a dark and stormy night; the rain fell in torrents.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about a little.",
    '"Well?" said he.',
    "Happy families are all alike; every unhappy family is unhappy in its own way, and so on, and so on, and on.",
    "The sun shone.",
]


@pytest.fixture(scope="module")
def bi_encoder(tiny_encoder_dir):
    torch.manual_seed(0)
    return BiEncoder.from_backbone(
        str(tiny_encoder_dir),
        projection_dim=8,
        max_seq_length=48,
        classifier_hidden_dim=16,
        lexical_buckets=0,
        pooled_cosine=False,
    )


def test_style_known_values():
    text = "The cat sat. The dog, a big one, ran; it ran far!"
    stats = raw_style_statistics(text)
    words = ["The", "cat", "sat", "The", "dog", "a", "big", "one", "ran", "it", "ran", "far"]
    assert stats["type_token_ratio"] == pytest.approx(len({w.lower() for w in words}) / 12)
    assert stats["avg_sentence_length"] == pytest.approx(12 / 2)  # "sat." and "far!" end sentences
    assert stats["avg_word_length"] == pytest.approx(sum(map(len, words)) / 12)
    assert stats["comma_rate"] == pytest.approx(2 / 12)
    assert stats["semicolon_rate"] == pytest.approx(1 / 12)
    assert stats["exclamation_question_rate"] == pytest.approx(1 / 12)
    non_space = len(text.replace(" ", ""))
    assert stats["punctuation_ratio"] == pytest.approx(5 / non_space)  # . , , ; !
    assert stats["capitalized_rate"] == pytest.approx(2 / 12)
    features = style_features(text)
    assert features.dtype == np.float32 and features.shape == (len(STYLE_FEATURE_NAMES),)
    # the documented transform for sentence length: (log1p(x) - log1p(20)) / 0.5
    idx = STYLE_FEATURE_NAMES.index("avg_sentence_length")
    assert features[idx] == pytest.approx((math.log1p(6) - math.log1p(20)) / 0.5, rel=1e-5)
    assert np.all(np.abs(features) <= 5.0)


def test_style_empty_and_feature_sets():
    assert np.all(np.isfinite(style_features("")))
    assert get_side_feature_set("style_v1").batch(["a b", "c"]).shape == (2, len(STYLE_FEATURE_NAMES))
    assert get_side_feature_set("none").dim == 0
    with pytest.raises(ValueError):
        get_side_feature_set("nope")


def test_mean_pooling_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = pool(hidden, mask, "mean")
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))


def test_bi_encoder_shapes_and_batch_invariance(bi_encoder):
    emb = bi_encoder.encode_texts(TEXTS, batch_size=2)
    assert (
        emb.pooled.shape == (5, 32)
        and emb.projected.shape == (5, 8)
        and emb.style.shape == (5, len(STYLE_FEATURE_NAMES))
    )
    assert torch.allclose(emb.projected.norm(dim=-1), torch.ones(5), atol=1e-5)
    # one text alone (no padding) gives the same vector as inside a padded, length-sorted batch
    for i in (0, 2):
        alone = bi_encoder.encode_texts([TEXTS[i]])
        assert torch.allclose(alone.pooled[0], emb.pooled[i], atol=1e-5)
    logits = bi_encoder.pair_logits(emb, emb)
    assert logits.shape == (5, 2)
    assert bi_encoder.classifier[0].in_features == 4 * 32 + 3 * len(STYLE_FEATURE_NAMES)


def test_bi_encoder_forward_matches_encode_texts(bi_encoder):
    bi_encoder.eval()
    tok = bi_encoder.tokenize(TEXTS[:2])
    padded = bi_encoder.tokenizer.pad(tok, return_tensors="pt")
    style = torch.from_numpy(bi_encoder.side_feature_array(TEXTS[:2]))
    with torch.no_grad():
        out = bi_encoder(
            {
                "input_ids_a": padded["input_ids"],
                "attention_mask_a": padded["attention_mask"],
                "style_a": style,
                "input_ids_b": padded["input_ids"].flip(0),
                "attention_mask_b": padded["attention_mask"].flip(0),
                "style_b": style.flip(0),
            }
        )
    emb = bi_encoder.encode_texts(TEXTS[:2])
    assert torch.allclose(out["pooled_a"], emb.pooled, atol=1e-5)
    flipped = emb._replace(pooled=emb.pooled.flip(0), projected=emb.projected.flip(0), style=emb.style.flip(0))
    assert torch.allclose(out["logits"], bi_encoder.pair_logits(emb, flipped), atol=1e-5)


def test_long_text_windows_average_every_token(bi_encoder):
    """A text past max_seq_length: "windows" mean-pools over all its tokens, window by window; "truncate"
    reads the first window; texts that fit are read the same way by both."""
    long_text = " ".join(TEXTS) * 3
    texts = [TEXTS[0], long_text]
    bi_encoder.eval()
    tokenizer, length = bi_encoder.tokenizer, bi_encoder.config.max_seq_length
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    width = length - 2
    assert len(ids) > 2 * width  # at least three windows, the last one short
    # reference: encode each window alone, then the plain mean over every token of every window
    states = []
    with torch.no_grad():
        for start in range(0, len(ids), width):
            window = torch.tensor([[tokenizer.cls_token_id, *ids[start : start + width], tokenizer.sep_token_id]])
            states.append(
                bi_encoder.encoder(input_ids=window, attention_mask=torch.ones_like(window)).last_hidden_state[0]
            )
    expected = torch.cat(states).mean(0)

    windows = bi_encoder.encode_texts(texts, batch_size=2)
    assert torch.allclose(windows.pooled[1], expected, atol=1e-5)
    with torch.no_grad():
        projected = torch.nn.functional.normalize(bi_encoder.projection(expected), dim=-1)
    assert torch.allclose(windows.projected[1], projected, atol=1e-5)

    bi_encoder.config.long_texts = "truncate"
    try:
        truncated = bi_encoder.encode_texts(texts)
    finally:
        bi_encoder.config.long_texts = "windows"
    assert torch.allclose(truncated.pooled[1], states[0].mean(0), atol=1e-5)
    assert torch.allclose(truncated.pooled[0], windows.pooled[0], atol=1e-5)
    assert bi_encoder.text_token_limit() == width * bi_encoder.config.max_windows + 2

    bi_encoder.config.max_windows = 2
    try:
        capped = bi_encoder.encode_texts(texts)
    finally:
        bi_encoder.config.max_windows = 64
    assert torch.allclose(capped.pooled[1], torch.cat(states[:2]).mean(0), atol=1e-5)


@pytest.mark.parametrize("legacy", [False, True])
def test_bi_encoder_roundtrip(bi_encoder, tmp_path, legacy):
    out = bi_encoder.save_pretrained(tmp_path / "model")
    if legacy:
        from safetensors.torch import load_file

        state = load_file(str(out / "model.safetensors"))
        torch.save(state, out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    loaded = BiEncoder.from_pretrained(out)
    assert loaded.config == bi_encoder.config
    a, b = bi_encoder.encode_texts(TEXTS), loaded.encode_texts(TEXTS)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.projected, b.projected)
    assert torch.equal(bi_encoder.pair_logits(a, a), loaded.pair_logits(b, b))


def test_bi_encoder_corrupt_or_missing(bi_encoder, tmp_path):
    out = bi_encoder.save_pretrained(tmp_path / "model")
    (out / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="damaged"):
        BiEncoder.from_pretrained(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="neither"):
        BiEncoder.from_pretrained(out)
    with pytest.raises(ModelLoadError, match="bookmatch_config.json"):
        BiEncoder.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError):
        BiEncoder.from_backbone(str(tmp_path / "no-such-model"))


def test_bi_encoder_config_validates():
    with pytest.raises(ValueError):
        BiEncoderConfig(backbone="x", pooling="median")
    assert BiEncoderConfig(backbone="x", side_features="none").side_feature_names == []


def test_cross_encoder_roundtrip_and_corrupt(tiny_encoder_dir, tmp_path):
    torch.manual_seed(0)
    model = CrossEncoder.from_backbone(str(tiny_encoder_dir), max_seq_length=40)
    pairs = list(zip(TEXTS, TEXTS[1:] + TEXTS[:1]))
    logits = model.predict_logits(pairs, batch_size=2)
    assert logits.shape == (5, 2)
    # batching and length sorting do not change a pair's logits
    assert torch.allclose(model.predict_logits(pairs[1:2]), logits[1:2], atol=1e-5)
    out = model.save_pretrained(tmp_path / "cross")
    loaded = CrossEncoder.from_pretrained(out)
    assert loaded.config.max_seq_length == 40
    assert torch.equal(loaded.predict_logits(pairs, batch_size=2), logits)
    (out / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError):
        CrossEncoder.from_pretrained(out)


def test_bi_encoder_lexical_signature_roundtrip_and_effect(tiny_encoder_dir, tmp_path):
    from bookmatch.text.lexical import LexicalFingerprint

    torch.manual_seed(0)
    model = BiEncoder.from_backbone(
        str(tiny_encoder_dir),
        projection_dim=8,
        max_seq_length=48,
        classifier_hidden_dim=16,
        lexical_buckets=512,
        lexical_top_k=16,
        name_top_k=0,
        pooled_cosine=False,
    )
    corpus = TEXTS + ["Captain Nemo steered the Nautilus past Vanikoro.", "Nemo and Aronnax left Vanikoro behind."]
    model.fit_lexical(corpus)
    n_style = len(STYLE_FEATURE_NAMES)
    features = model.side_feature_array(corpus)
    assert features.shape == (len(corpus), n_style + 32)
    # the signature part is the fingerprint's own signature with the fitted IDF
    reference = LexicalFingerprint(512).fit(corpus).signatures(corpus, 16)
    assert np.allclose(features[:, n_style:], reference)

    loaded = BiEncoder.from_pretrained(model.save_pretrained(tmp_path / "lex"))
    assert np.allclose(loaded.lexical.idf, model.lexical.idf)
    emb_a, emb_b = model.encode_texts(corpus[-2:-1]), model.encode_texts(corpus[-1:])
    assert torch.equal(
        model.pair_logits(emb_a, emb_b),
        loaded.pair_logits(loaded.encode_texts(corpus[-2:-1]), loaded.encode_texts(corpus[-1:])),
    )
    # the classifier sees the lexical cosine: changing only the other side's signature changes the logits
    other = model.encode_texts(corpus[:1])
    swapped = emb_b._replace(style=torch.cat([emb_b.style[:, :n_style], other.style[:, n_style:]], dim=1))
    assert not torch.allclose(model.pair_logits(emb_a, emb_b), model.pair_logits(emb_a, swapped))


def test_bi_encoder_names_signature_and_pooled_cosine(tiny_encoder_dir, tmp_path):
    from bookmatch.text.lexical import LexicalFingerprint

    torch.manual_seed(0)
    model = BiEncoder.from_backbone(
        str(tiny_encoder_dir),
        projection_dim=8,
        max_seq_length=48,
        classifier_hidden_dim=16,
        lexical_buckets=512,
        lexical_top_k=16,
        name_top_k=4,
        pooled_cosine=True,
    )
    corpus = TEXTS + ["Captain Nemo steered the Nautilus past Vanikoro.", "Then Nemo and Aronnax left Vanikoro behind."]
    model.fit_lexical(corpus)
    n_style = len(STYLE_FEATURE_NAMES)
    features = model.side_feature_array(corpus)
    assert features.shape == (len(corpus), n_style + 32 + 8)
    reference = LexicalFingerprint(512, vocabulary="names").fit(corpus).signatures(corpus, 4)
    assert np.allclose(features[:, n_style + 32 :], reference)
    assert model.classifier[0].in_features == 4 * model.config.hidden_size + 3 * n_style + 3

    loaded = BiEncoder.from_pretrained(model.save_pretrained(tmp_path / "names"))
    assert np.allclose(loaded.names.idf, model.names.idf)
    emb_a, emb_b = model.encode_texts(corpus[-2:-1]), model.encode_texts(corpus[-1:])
    assert torch.equal(
        model.pair_logits(emb_a, emb_b),
        loaded.pair_logits(loaded.encode_texts(corpus[-2:-1]), loaded.encode_texts(corpus[-1:])),
    )
    # changing only the names signature of one side changes the logits
    other = model.encode_texts(corpus[:1])
    swapped = emb_b._replace(style=torch.cat([emb_b.style[:, : n_style + 32], other.style[:, n_style + 32 :]], dim=1))
    assert not torch.allclose(model.pair_logits(emb_a, emb_b), model.pair_logits(emb_a, swapped))
    # the pooled cosine enters on its own: with the four vector blocks' weights zeroed the logits still move
    with torch.no_grad():
        model.classifier[0].weight[:, : 4 * model.config.hidden_size] = 0
    scaled = emb_b._replace(pooled=emb_b.pooled + 3 * emb_a.pooled)
    assert not torch.allclose(model.pair_logits(emb_a, emb_b), model.pair_logits(emb_a, scaled))


def test_head_learning_rate_applies_to_new_heads_only(bi_encoder):
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import _optimizer

    optimizer = _optimizer(bi_encoder, ContrastiveTrainConfig(lr=1e-5, head_lr=1e-3))
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr_of[id(bi_encoder.encoder.embeddings.word_embeddings.weight)] == 1e-5
    assert lr_of[id(bi_encoder.encoder.encoder.layer[0].attention.self.query.weight)] == 1e-5
    assert lr_of[id(bi_encoder.classifier[0].weight)] == 1e-3
    assert lr_of[id(bi_encoder.projection[0].weight)] == 1e-3
    assert len(lr_of) == sum(1 for p in bi_encoder.parameters() if p.requires_grad)


def test_half_precision_backbones_and_bf16_configs_load_in_float32(tiny_encoder_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    half = tmp_path / "bf16_backbone"
    AutoModel.from_pretrained(tiny_encoder_dir, dtype=torch.bfloat16).save_pretrained(half)  # config.json names bf16
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(half)
    bi = BiEncoder.from_backbone(str(half), projection_dim=8, max_seq_length=32)
    cross = CrossEncoder.from_backbone(str(half), max_seq_length=32)
    assert {p.dtype for p in bi.parameters()} == {p.dtype for p in cross.model.parameters()} == {torch.float32}
    cross.model.config.dtype = torch.bfloat16  # what a DeepSpeed bf16 run leaves in the saved config.json
    reloaded = CrossEncoder.from_pretrained(cross.save_pretrained(tmp_path / "cross"))
    assert {p.dtype for p in reloaded.model.parameters()} == {torch.float32}


def test_model_folders_without_tokenizer_files_are_refused(bi_encoder, tiny_encoder_dir, tmp_path):
    folders = [
        bi_encoder.save_pretrained(tmp_path / "bi"),
        CrossEncoder.from_backbone(str(tiny_encoder_dir)).save_pretrained(tmp_path / "cross"),
    ]
    for folder in folders:
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    for load, folder in zip((BiEncoder.from_pretrained, CrossEncoder.from_pretrained), folders):
        with pytest.raises(ModelLoadError, match="tokenizer") as caught:
            load(folder)
        assert "\n" not in str(caught.value)


def test_attention_dropout_replaces_the_backbones_own_for_training(tiny_encoder_dir):
    """0 drops the attention-probability dropout (the fused CPU kernel's path); None keeps the backbone's 0.1;
    the dropout on hidden states stays either way."""

    def attention_dropouts(model) -> set[float]:
        return {m.dropout.p for name, m in model.named_modules() if name.endswith("attention.self")}

    kept = BiEncoder.from_backbone(str(tiny_encoder_dir))
    dropped = BiEncoder.from_backbone(str(tiny_encoder_dir), attention_dropout=0.0)
    assert attention_dropouts(kept.encoder) == {0.1} and attention_dropouts(dropped.encoder) == {0.0}
    assert dropped.encoder.config.hidden_dropout_prob == kept.encoder.config.hidden_dropout_prob == 0.1
    cross = CrossEncoder.from_backbone(str(tiny_encoder_dir), attention_dropout=0.25)
    assert attention_dropouts(cross.model) == {0.25}


def test_contrastive_training_drops_attention_dropout_and_cross_keeps_the_backbones():
    from bookmatch.training.config import ContrastiveTrainConfig, CrossTrainConfig

    assert ContrastiveTrainConfig().attention_dropout == 0.0
    assert CrossTrainConfig().attention_dropout is None
