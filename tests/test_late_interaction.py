"""Late interaction (`scoring: maxsim`): MaxSim against plain loops, its SupCon and GradCache against plain
references, the bi-encoder's fast paths against per-pair scoring, training, saving, calibrating and serving."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from test_training import _synthetic_books, make_pair_dataset

from bookmatch.models import late_interaction
from bookmatch.models.late_interaction import (
    pad_tokens,
    symmetric_maxsim_matrix,
    symmetric_maxsim_pairs,
    token_mask,
)


def _random_tokens(lengths: list[int], dim: int, seed: int) -> torch.Tensor:
    """Normalised random token vectors, zero rows after each text's `lengths[i]` tokens."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1) for n in lengths]
    return pad_tokens(rows, dim)


def _plain_maxsim(a: torch.Tensor, b: torch.Tensor, len_a: int, len_b: int) -> float:
    """Mean over a's real tokens of the best dot product with b's real tokens, both directions averaged."""

    def one_way(q, d, lq, ld):
        total = 0.0
        for i in range(lq):
            total += max(float(sum(q[i, k] * d[j, k] for k in range(q.shape[1]))) for j in range(ld))
        return total / lq

    return 0.5 * (one_way(a, b, len_a, len_b) + one_way(b, a, len_b, len_a))


@pytest.mark.parametrize("block", [late_interaction.BLOCK_ELEMENTS, 7])
def test_maxsim_matches_plain_loops_with_padding(monkeypatch, block):
    monkeypatch.setattr(late_interaction, "BLOCK_ELEMENTS", block)  # 7: one row per block
    len_a, len_b = [3, 1, 5, 2], [4, 2, 1]
    a, b = _random_tokens(len_a, 6, 0), _random_tokens(len_b, 6, 1)
    assert a.shape == (4, 5, 6) and token_mask(a).sum(dim=1).tolist() == len_a
    matrix = symmetric_maxsim_matrix(a, b)
    reference = [[_plain_maxsim(a[i], b[j], len_a[i], len_b[j]) for j in range(3)] for i in range(4)]
    assert np.allclose(matrix.numpy(), reference, atol=1e-5)
    # aligned pairs: rows 0..2 of a with rows 0..2 of b, padded to different lengths
    pairs = symmetric_maxsim_pairs(a[:3], b)
    assert pairs.tolist() == pytest.approx([reference[i][i] for i in range(3)], abs=1e-5)
    # symmetric, and extra zero padding changes nothing
    assert torch.allclose(symmetric_maxsim_matrix(b, a).T, matrix, atol=1e-6)
    wider = torch.nn.functional.pad(b, (0, 0, 0, 3))
    assert torch.allclose(symmetric_maxsim_matrix(a, wider), matrix, atol=1e-6)
    # einsum reference of one direction, for a text against itself: every token finds itself (MaxSim 1)
    assert symmetric_maxsim_pairs(a, a).tolist() == pytest.approx([1.0] * 4, abs=1e-6)


def _plain_supcon(sims: torch.Tensor, labels: list[int], temperature: float) -> float:
    n = len(labels)
    losses = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        denominator = math.log(sum(math.exp(float(sims[i, j]) / temperature) for j in others))
        losses.append(-sum(float(sims[i, p]) / temperature - denominator for p in positives) / len(positives))
    return sum(losses) / len(losses)


def test_maxsim_supcon_matches_a_plain_reference():
    from bookmatch.training.losses import MaxSimSupConLoss

    lengths = [3, 5, 2, 4, 4, 1]
    tokens = _random_tokens(lengths, 8, 3) * 2.5  # not normalised: the loss normalises
    labels = [0, 1, 0, 2, 1, 3]
    loss = MaxSimSupConLoss(temperature=0.1, max_length=9)(tokens, torch.tensor(labels))
    sims = [
        [_plain_maxsim(tokens[i] / 2.5, tokens[j] / 2.5, lengths[i], lengths[j]) for j in range(6)] for i in range(6)
    ]
    expected = _plain_supcon(torch.tensor(sims), labels, 0.1)
    assert float(loss["contrastive_loss"]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"\(N, L, D\)"):
        MaxSimSupConLoss()(tokens[:, 0], torch.tensor(labels))


def test_gradcache_with_maxsim_gives_the_full_batch_gradients():
    from bookmatch.training.gradcache import CachedSupCon
    from bookmatch.training.losses import MaxSimSupConLoss

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Dropout(0.2))
    inputs = torch.randn(8, 4, 5)
    mask = (torch.arange(4)[None, :] < torch.tensor([4, 2, 3, 1, 4, 4, 2, 3])[:, None]).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 0])
    loss = MaxSimSupConLoss(temperature=0.2)

    def embed(mini):
        return layer(mini["x"]) * mini["mask"][..., None]

    grads = {}
    for cached in (False, True):
        layer.zero_grad()
        torch.manual_seed(1)
        if cached:
            total = CachedSupCon(loss, mini_batch_size=3).step(embed, {"x": inputs, "mask": mask}, labels)
        else:
            total = loss(embed({"x": inputs, "mask": mask}), labels)["contrastive_loss"]
            total.backward()
        grads[cached] = (float(total.detach()), [p.grad.clone() for p in layer.parameters()])
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-5)
    for plain, cached in zip(grads[False][1], grads[True][1]):
        assert plain.abs().max() > 0 and torch.allclose(plain, cached, atol=1e-6)


@pytest.fixture(scope="module")
def maxsim_model(tiny_encoder_dir, tmp_path_factory):
    from bookmatch.models.bi_encoder import BiEncoder

    torch.manual_seed(0)
    model = BiEncoder.from_backbone(
        str(tiny_encoder_dir),
        projection_dim=8,
        classifier_hidden_dim=16,
        max_seq_length=12,
        lexical_buckets=64,
        lexical_top_k=4,
        name_top_k=0,
        scoring="maxsim",
        max_windows=3,
    )
    model.eval()
    return model


TEXTS = [
    "The captain walked along the deck and looked at the grey sea for a long while.",
    "She said nothing.",
    "Mr. Holmes took the letter from the table, read it twice, and laughed aloud at the signature on it.",
    "In the morning the village was quiet; the dogs slept in the sun by the well.",
]


def test_bi_encoder_tokens_margins_and_save_load(maxsim_model, tmp_path):
    from bookmatch.models.bi_encoder import BiEncoder, TextEmbeddings

    model = maxsim_model
    emb = model.encode_texts(TEXTS, batch_size=2)
    assert emb.tokens is not None and emb.tokens.shape[0] == 4 and emb.tokens.shape[2] == 8
    # a text's tokens are its windows' token vectors, in order: encode each window alone
    inputs, owners = model.window_inputs(TEXTS[2:3])
    assert len(inputs) >= 2  # the long text has several windows
    expected = []
    for ids in inputs:
        with torch.no_grad():
            _, _, tokens = model.encode_with_tokens(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        expected.append(tokens[0])
    expected = torch.cat(expected)
    own = emb.tokens[2, : int(token_mask(emb.tokens[2:3]).sum())]
    assert torch.allclose(own, expected, atol=1e-5)
    # the classifier reads the pair's MaxSim: changing only the tokens changes the logits
    logits = model.pair_logits(emb, emb.take([1, 0, 3, 2]))
    shuffled = TextEmbeddings(emb.pooled, emb.projected, emb.style, emb.tokens.flip(0))
    assert not torch.allclose(logits, model.pair_logits(shuffled, emb.take([1, 0, 3, 2])))
    # margins_against (the cohort's fast path) equals pair_logits over every pair
    margins = model.margins_against(emb, emb.take([3, 1, 0]))
    for i in range(4):
        for j, other in enumerate([3, 1, 0]):
            pair = model.pair_logits(emb.take([i]), emb.take([other]))[0]
            assert float(margins[i, j]) == pytest.approx(float(pair[1] - pair[0]), abs=1e-5)
    # saving and loading keeps the setting and the scores
    model.save_pretrained(tmp_path / "final")
    assert json.loads((tmp_path / "final" / "bookmatch_config.json").read_text())["scoring"] == "maxsim"
    loaded = BiEncoder.from_pretrained(tmp_path / "final")
    assert loaded.late_interaction
    again = loaded.encode_texts(TEXTS)
    assert torch.allclose(loaded.pair_logits(again, again.take([1, 0, 3, 2])), logits, atol=1e-5)


def test_cosine_stays_the_default_without_token_vectors(models):
    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.training.config import ContrastiveTrainConfig

    assert ContrastiveTrainConfig().scoring == "cosine"
    model = BiEncoder.from_pretrained(models["bi"])  # saved before the setting existed in its config? it loads
    assert not model.late_interaction and model.encode_texts(TEXTS[:2]).tokens is None


def _train(data, encoder, out, cached: bool, steps: int = 2):
    from bookmatch.training.config import ContrastiveTrainConfig
    from bookmatch.training.trainer import train_contrastive

    return train_contrastive(
        ContrastiveTrainConfig(
            data=str(data),
            out=str(out),
            model=str(encoder),
            cpu=True,
            max_seq_length=24,
            lr=1e-3,
            batch_size=8,
            max_steps=steps,
            eval_steps=steps,
            save_steps=100,
            projection_dim=8,
            epochs=1,
            scoring="maxsim",
            contrastive_weight=1.0,
            cached_contrastive=cached,
            mini_batch_size=4,
        )
    )


@pytest.fixture(scope="module")
def maxsim_data(tmp_path_factory):
    return make_pair_dataset(tmp_path_factory.mktemp("maxsim") / "data", _synthetic_books(6, 8, seed=2), 32, 16)


def test_training_with_maxsim_cached_equals_plain(maxsim_data, tiny_encoder_dir, tmp_path):
    """Two steps with scoring: maxsim, plain and GradCache: with dropout off, the same weights."""
    from safetensors.torch import load_file

    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_encoder_dir, encoder)
    encoder_config = json.loads((encoder / "config.json").read_text())
    encoder_config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (encoder / "config.json").write_text(json.dumps(encoder_config))
    weights = {}
    for cached in (False, True):
        _train(maxsim_data, encoder, tmp_path / f"run-{cached}", cached)
        weights[cached] = load_file(str(tmp_path / f"run-{cached}" / "final" / "model.safetensors"))
    initial = load_file(str(encoder / "model.safetensors"))
    moved = weights[False]["encoder.embeddings.word_embeddings.weight"] - initial["embeddings.word_embeddings.weight"]
    assert moved.abs().max() > 1e-4
    for key, value in weights[False].items():
        assert torch.allclose(value, weights[True][key], atol=2e-5, rtol=1e-4), key


def test_maxsim_model_trains_calibrates_and_serves(maxsim_data, tiny_encoder_dir, tmp_path):
    """A trained maxsim model calibrates with a score cohort (token vectors in its file) and the Matcher serves
    the calibrated probabilities of its cohort-normalised margins."""
    from bookmatch.calibration import CalibrateConfig, calibrate
    from bookmatch.cohort import COHORT_FILE, read_cohort
    from bookmatch.inference import Matcher
    from bookmatch.inference.calibration import probability_from_margin

    final = _train(maxsim_data, tiny_encoder_dir, tmp_path / "run", cached=True)
    calibrate(
        CalibrateConfig(model_dir=str(final), data_dir=str(maxsim_data), cohort_size=5, precision="no", device="cpu")
    )
    written = json.loads((final.parent / "calibration.json").read_text())
    cohort = read_cohort(final.parent / COHORT_FILE, written["score_normalization"]["sha256"])
    assert cohort.tokens is not None and cohort.tokens.shape[0] == 5
    matcher = Matcher.from_pretrained(final, device="cpu", precision="no")
    assert matcher.bi.model.late_interaction and torch.equal(matcher.bi.cohort.tokens, cohort.tokens)
    validation = __import__("datasets").load_from_disk(str(maxsim_data))["validation"]
    pairs = list(zip(validation["text1"], validation["text2"]))[:6]
    raw = matcher.bi.raw_scores(*zip(*pairs))
    expected = probability_from_margin(raw.normalized, written["temperature"], written["offset"])
    assert [r.probability for r in matcher.score_many(pairs)] == pytest.approx(expected.tolist(), abs=1e-6)
    # symmetric, and texts the scorer has cached score like fresh ones (padded to other lengths)
    swapped = [(b, a) for a, b in pairs]
    assert [r.probability for r in matcher.score_many(swapped)] == pytest.approx(expected.tolist(), abs=1e-5)
    fresh = Matcher.from_pretrained(final, device="cpu", precision="no")
    assert [r.probability for r in fresh.score_many(pairs[:2])] == pytest.approx(expected[:2].tolist(), abs=1e-5)
    # a cosine model's cohort does not fit it
    from bookmatch.cohort import ScoreCohort
    from bookmatch.errors import InputError

    with pytest.raises(InputError, match="token vectors absent"):
        matcher.bi.cohort = ScoreCohort(cohort.pooled, cohort.projected, cohort.style)
