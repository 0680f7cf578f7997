"""Matcher API, `bookmatch infer` single and batch mode, two-stage routing, and bad input handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bookmatch.cli import main
from bookmatch.errors import InputError, ModelLoadError
from bookmatch.inference import Matcher, read_pairs_jsonl, two_stage_decision
from bookmatch.inference.calibration import probability_from_margin
from bookmatch.storage import atomic_write_json

PASSAGES = [
    "The old house stood at the end of the lane, its windows dark and its garden overgrown with weeds that nobody had cut in years.",
    "She walked down to the harbour every morning to watch the fishing boats come in, counting them as her father had taught her.",
    "The captain gave his orders in a low voice, and the men moved quickly about the deck, for the storm was nearly upon them.",
    "It was the kind of winter evening when the fire seems the only friend in the world, and the wind cries in the chimney.",
    "He had never been fond of letters, but this one he read three times before he put it down and looked out at the rain.",
    "The professor adjusted his spectacles, cleared his throat, and began to explain the curious properties of the metal.",
]


def _pairs():
    return [(PASSAGES[i], PASSAGES[j]) for i in range(len(PASSAGES)) for j in range(len(PASSAGES)) if i != j][:20]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _invoke(args, input=None):
    return CliRunner().invoke(main, args, input=input)


def test_api_single_cli_and_batch_agree(models, tmp_path):
    matcher = Matcher.from_pretrained(models["bi"], device="cpu", precision="no")
    pairs = _pairs()
    api = [r.probability for r in matcher.score_many(pairs, batch_size=4)]
    one_by_one = [matcher.score(a, b).probability for a, b in pairs]
    assert api == pytest.approx(one_by_one, abs=1e-5)

    # Reference: the model's own logit margins in both orders, averaged (no calibration file -> temperature 1).
    model = matcher.bi.model
    emb_a, emb_b = model.encode_texts([a for a, _ in pairs]), model.encode_texts([b for _, b in pairs])
    forward, backward = model.pair_logits(emb_a, emb_b).numpy(), model.pair_logits(emb_b, emb_a).numpy()
    reference = probability_from_margin(0.5 * ((forward[:, 1] - forward[:, 0]) + (backward[:, 1] - backward[:, 0])))
    assert api == pytest.approx(reference.tolist(), abs=1e-5)
    # "same book" is symmetric, and so is the score, though the classifier reads its two sides in order
    assert [r.probability for r in matcher.score_many([(b, a) for a, b in pairs])] == pytest.approx(api, abs=1e-6)
    assert np.abs(forward - backward).max() > 1e-3

    single = _invoke(
        [
            "infer",
            "contrastive",
            "--model",
            str(models["bi"]),
            "--device",
            "cpu",
            "--precision",
            "no",
            "--text1",
            pairs[0][0],
            "--text2",
            pairs[0][1],
            "--style-sim",
        ]
    )
    assert single.exit_code == 0, single.output
    out = json.loads(single.stdout)
    assert out["probability"] == pytest.approx(api[0], abs=1e-5)
    assert out["same_book"] == (api[0] >= 0.5)
    assert out["confidence"] == pytest.approx(api[0] if out["same_book"] else 1 - api[0], abs=1e-5)
    assert "style_similarity" in out and out["stage"] == "bi-encoder"

    source = _write_jsonl(
        tmp_path / "pairs.jsonl", [{"id": f"p{i}", "text1": a, "text2": b} for i, (a, b) in enumerate(pairs)]
    )
    batch = _invoke(
        [
            "infer",
            "contrastive",
            "--model",
            str(models["bi"]),
            "--device",
            "cpu",
            "--precision",
            "no",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "scores.jsonl"),
            "--batch-size",
            "3",
        ]
    )
    assert batch.exit_code == 0, batch.output
    assert "infer: scored: 20 pairs" in batch.stderr
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(20)]
    assert [r["probability"] for r in rows] == pytest.approx(api, abs=1e-5)


def test_repeated_texts_are_encoded_once(models):
    matcher = Matcher.from_pretrained(models["bi"], device="cpu", precision="no", cache_size=0)
    pairs = _pairs()  # 20 pairs over 6 distinct passages
    matcher.score_many(pairs)
    assert matcher.bi.encoded_texts == len(PASSAGES)
    cached = Matcher.from_pretrained(models["bi"], device="cpu", precision="no", cache_size=100)
    cached.score_many(pairs[:10])
    before = cached.bi.encoded_texts
    cached.score_many(pairs)  # every text is now in the LRU cache
    assert cached.bi.encoded_texts == before


def test_threshold_flag_then_calibration_file_then_half(models, tmp_path):
    assert Matcher.from_pretrained(models["bi"], device="cpu", precision="no").threshold == 0.5
    calibration = models["bi"].parent / "calibration.json"
    atomic_write_json(calibration, {"temperature": 2.0, "threshold": 0.37})
    try:
        matcher = Matcher.from_pretrained(models["bi"], device="cpu", precision="no")
        assert matcher.threshold == 0.37
        result = matcher.score(*_pairs()[0])
        margin = matcher.bi.raw_scores([_pairs()[0][0]], [_pairs()[0][1]]).margin
        assert result.probability == pytest.approx(float(probability_from_margin(margin, 2.0)[0]), abs=1e-6)
        assert result.same_book == (result.probability >= 0.37)
        assert Matcher.from_pretrained(models["bi"], device="cpu", precision="no", threshold=0.9).threshold == 0.9
    finally:
        calibration.unlink()


def test_style_similarity_uses_isotonic_knots(models):
    style_file = models["bi"].parent / "style_calibration.json"
    atomic_write_json(style_file, {"x": [-1.0, 0.0, 1.0], "y": [0.0, 0.2, 1.0]})
    try:
        matcher = Matcher.from_pretrained(models["bi"], device="cpu", precision="no")
        a, b = _pairs()[0]
        cosine = matcher.bi.raw_scores([a], [b]).cosine[0]
        assert matcher.score(a, b).style_similarity == pytest.approx(
            float(np.interp(cosine, [-1, 0, 1], [0, 0.2, 1])), abs=1e-6
        )
    finally:
        style_file.unlink()


def test_two_stage_routes_by_prefilter(models, tmp_path):
    pairs = _pairs()
    contrastive = Matcher.from_pretrained(models["bi"], device="cpu", precision="no")
    bi_p = np.array([r.probability for r in contrastive.score_many(pairs)])
    prefilter = float(np.median(bi_p))
    matcher = Matcher.from_pretrained(
        models["bi"],
        cross_model=models["cross"],
        device="cpu",
        precision="no",
        prefilter_threshold=prefilter,
        cross_threshold=0.5,
    )
    results = matcher.score_many(pairs)
    import torch

    cross_logits = matcher.cross.model.predict_logits(pairs)
    cross_p = torch.softmax(cross_logits, dim=-1)[:, 1].numpy()
    probability, same_book, by_cross = two_stage_decision(bi_p, cross_p, prefilter, 0.5)
    assert 0 < by_cross.sum() < len(pairs)  # both stages decide some pairs
    assert [r.stage for r in results] == ["cross-encoder" if c else "bi-encoder" for c in by_cross]
    assert [r.probability for r in results] == pytest.approx(probability.tolist(), abs=1e-5)
    assert [r.same_book for r in results] == same_book.tolist()
    assert not any(r.same_book for r in results if r.stage == "bi-encoder")

    i = int(np.flatnonzero(by_cross)[0])
    cli = _invoke(
        [
            "infer",
            "two-stage",
            "--bi-model",
            str(models["bi"]),
            "--cross-model",
            str(models["cross"]),
            "--device",
            "cpu",
            "--precision",
            "no",
            "--prefilter-threshold",
            str(prefilter),
            "--text1",
            pairs[i][0],
            "--text2",
            pairs[i][1],
        ]
    )
    assert cli.exit_code == 0, cli.output
    out = json.loads(cli.stdout)
    assert out["stage"] == "cross-encoder" and out["probability"] == pytest.approx(probability[i], abs=1e-5)

    source = _write_jsonl(tmp_path / "pairs.jsonl", [{"text1": a, "text2": b} for a, b in pairs])
    batch = _invoke(
        [
            "infer",
            "two-stage",
            "--bi-model",
            str(models["bi"]),
            "--cross-model",
            str(models["cross"]),
            "--device",
            "cpu",
            "--precision",
            "no",
            "--prefilter-threshold",
            str(prefilter),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out.jsonl"),
        ]
    )
    assert batch.exit_code == 0, batch.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [r.stage for r in results]
    assert [r["probability"] for r in rows] == pytest.approx(probability.tolist(), abs=1e-5)


def test_stdin_json_and_non_utf8_bytes(models):
    a, b = _pairs()[0]
    ok = _invoke(
        ["infer", "contrastive", "--model", str(models["bi"]), "--device", "cpu"],
        input=json.dumps({"text1": a, "text2": b}),
    )
    assert ok.exit_code == 0, ok.output
    direct = Matcher.from_pretrained(models["bi"], device="cpu").score(a, b)
    assert json.loads(ok.stdout)["probability"] == pytest.approx(direct.probability, abs=1e-5)

    raw = (
        json.dumps({"text1": a + " caf\u00e9", "text2": b}, ensure_ascii=False)
        .encode("utf-8")
        .replace("\u00e9".encode("utf-8"), b"\xe9")
    )
    bad = _invoke(["infer", "contrastive", "--model", str(models["bi"]), "--device", "cpu"], input=raw)
    assert bad.exit_code == 0, bad.output
    assert "not valid UTF-8" in bad.stderr and "Traceback" not in bad.output
    assert 0.0 <= json.loads(bad.stdout)["probability"] <= 1.0

    garbage = _invoke(["infer", "contrastive", "--model", str(models["bi"]), "--device", "cpu"], input="not json")
    assert garbage.exit_code == InputError.exit_code
    assert garbage.stderr.startswith("error: stdin is not a JSON object") and "Traceback" not in garbage.output


def test_empty_short_and_long_texts(models):
    base = ["infer", "contrastive", "--model", str(models["bi"]), "--device", "cpu"]
    empty = _invoke(base + ["--text1", "   ", "--text2", PASSAGES[0]])
    assert empty.exit_code == InputError.exit_code
    assert empty.stderr.strip() == "error: text1 is empty: give two non-empty passages"
    with pytest.raises(InputError):
        Matcher.from_pretrained(models["bi"], device="cpu").score("", PASSAGES[0])

    short = _invoke(base + ["--text1", "Hello there.", "--text2", PASSAGES[0]])
    assert short.exit_code == 0 and "very short texts are unreliable" in short.stderr
    assert 0.0 <= json.loads(short.stdout)["probability"] <= 1.0

    # past max_seq_length (64) the bi-encoder reads the text whole, window by window: no warning
    long_text = " ".join(PASSAGES * 10)
    long = _invoke(base + ["--text1", long_text, "--text2", PASSAGES[0]])
    assert long.exit_code == 0 and long.stderr == ""
    # past max_windows windows it is cut, and says so
    limit = Matcher.from_pretrained(models["bi"], device="cpu").bi.max_text_tokens
    assert limit == 62 * 64 + 2
    huge = _invoke(base + ["--text1", " ".join(PASSAGES * 200), "--text2", PASSAGES[0]])
    assert huge.exit_code == 0 and f"only its first {limit} are read" in huge.stderr
    assert "very short" not in huge.stderr
    clean = _invoke(base + ["--text1", PASSAGES[1], "--text2", PASSAGES[0]])
    assert clean.exit_code == 0 and clean.stderr == ""


def test_bad_jsonl_lines(models, tmp_path):
    a, b = _pairs()[0]
    source = _write_jsonl(
        tmp_path / "pairs.jsonl", [{"text1": a, "text2": b}, "{not json", {"text1": a}, "", {"text1": a, "text2": b}]
    )
    out = tmp_path / "scores.jsonl"
    base = [
        "infer",
        "contrastive",
        "--model",
        str(models["bi"]),
        "--device",
        "cpu",
        "--input",
        str(source),
        "--output",
        str(out),
    ]
    stop = _invoke(base)
    assert stop.exit_code == InputError.exit_code
    assert "line 2: not valid JSON" in stop.stderr and "--skip-bad-lines" in stop.stderr
    assert "Traceback" not in stop.output
    assert not out.exists() and not list(tmp_path.glob(".scores.jsonl*"))  # nothing half-written

    go_on = _invoke(base + ["--skip-bad-lines"])
    assert go_on.exit_code == 0, go_on.output
    assert "line 3: missing field 'text2'" in go_on.stderr
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 5]

    with pytest.raises(InputError, match="line 2"):
        list(read_pairs_jsonl(source))


def test_missing_and_corrupt_model_folders(models, tmp_path):
    import shutil

    missing = _invoke(
        ["infer", "contrastive", "--model", str(tmp_path / "nope"), "--text1", PASSAGES[0], "--text2", PASSAGES[1]]
    )
    assert missing.exit_code == ModelLoadError.exit_code and missing.stderr.startswith("error: model folder")

    broken = tmp_path / "broken" / "final"
    shutil.copytree(models["bi"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    corrupt = _invoke(
        [
            "infer",
            "contrastive",
            "--model",
            str(broken),
            "--device",
            "cpu",
            "--text1",
            PASSAGES[0],
            "--text2",
            PASSAGES[1],
        ]
    )
    assert corrupt.exit_code == ModelLoadError.exit_code
    assert corrupt.stderr.startswith("error: ") and len(corrupt.stderr.strip().splitlines()) == 1
    assert "Traceback" not in corrupt.output

    (broken / "bookmatch_config.json").write_text("{half", encoding="utf-8")
    with pytest.raises(ModelLoadError):
        Matcher.from_pretrained(broken, device="cpu")

    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ModelLoadError, match="holds no model"):
        Matcher.from_pretrained(empty_dir, device="cpu")
    with pytest.raises(ModelLoadError, match="cross-encoder"):
        Matcher.from_pretrained(models["cross"], device="cpu")


def test_files_with_latin1_bytes_and_missing_output(models, tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(PASSAGES[0].encode("utf-8") + b" caf\xe9")
    second.write_text(PASSAGES[1], encoding="utf-8")
    base = ["infer", "contrastive", "--model", str(models["bi"]), "--device", "cpu"]
    result = _invoke(base + ["--file1", str(first), "--file2", str(second)])
    assert result.exit_code == 0, result.output
    assert f"{first} is not valid UTF-8" in result.stderr
    expected = Matcher.from_pretrained(models["bi"], device="cpu").score(PASSAGES[0] + " caf\ufffd", PASSAGES[1])
    assert json.loads(result.stdout)["probability"] == pytest.approx(expected.probability, abs=1e-5)

    missing = _invoke(base + ["--file1", str(tmp_path / "nope.txt"), "--file2", str(second)])
    assert missing.exit_code == InputError.exit_code and missing.stderr.startswith("error: cannot read")
    no_output = _invoke(base + ["--input", str(first)])
    assert no_output.exit_code == InputError.exit_code and "--input needs --output" in no_output.stderr
    # options that one mode would silently ignore are refused (before the model loads: a bad folder is not read)
    unloaded = ["infer", "contrastive", "--model", str(tmp_path / "no_model")]
    mixed = _invoke(unloaded + ["--input", str(first), "--output", str(tmp_path / "o.jsonl"), "--text1", "a b c"])
    assert mixed.exit_code == InputError.exit_code and "drop --text1" in mixed.stderr
    lonely_output = _invoke(unloaded + ["--text1", "a b c", "--text2", "d e f", "--output", str(tmp_path / "o.jsonl")])
    assert lonely_output.exit_code == InputError.exit_code and "--output is for batch mode" in lonely_output.stderr


def test_bf16_autocast_scores_track_fp32_and_auto_resolves_to_the_native_choice(models):
    import torch

    from bookmatch.precision import autocast, native_bf16

    pairs = _pairs()
    fp32 = Matcher.from_pretrained(models["bi"], cross_model=models["cross"], device="cpu", precision="no")
    bf16 = Matcher.from_pretrained(models["bi"], cross_model=models["cross"], device="cpu", precision="bf16")
    assert (fp32.bi.precision, bf16.bi.precision, bf16.cross.precision) == ("no", "bf16", "bf16")
    texts = [a for a, _ in pairs]
    exact, rounded = fp32.bi.embed(texts), bf16.bi.embed(texts)
    assert not torch.equal(exact.pooled, rounded.pooled)  # autocast really ran in bf16
    for name in ("pooled", "projected"):
        cosine = torch.nn.functional.cosine_similarity(getattr(exact, name), getattr(rounded, name), dim=-1)
        assert cosine.min() > 0.995, name
    assert torch.equal(exact.style, rounded.style)  # signatures and style features never see autocast
    exact_logits = fp32.cross.model.predict_logits(pairs)
    with autocast("bf16", "cpu"):
        rounded_logits = bf16.cross.model.predict_logits(pairs)
    assert (exact_logits - rounded_logits).abs().max() < 0.05 * exact_logits.abs().max()
    assert bf16.cross.raw_scores([a for a, _ in pairs], [b for _, b in pairs]).margin == pytest.approx(
        (rounded_logits[:, 1] - rounded_logits[:, 0]).double().numpy(), abs=1e-6
    )

    auto = Matcher.from_pretrained(models["bi"], device="cpu")
    assert auto.bi.precision == ("bf16" if native_bf16(use_cuda=False) else "no")
    with pytest.raises(InputError, match="precision"):
        Matcher.from_pretrained(models["bi"], device="cpu", precision="fp8")


# ---------------------------------------------------------------------------------------------- review fixes


def test_lone_surrogate_is_a_bad_input(models, tmp_path):
    # json.dumps writes "\ud800" as an escape; json.loads turns it back into a lone surrogate the tokenizer refuses
    bad = _write_jsonl(
        tmp_path / "surr.jsonl",
        [{"text1": "The captain \ud800 spoke", "text2": PASSAGES[1]}, {"text1": PASSAGES[0], "text2": PASSAGES[2]}],
    )
    with pytest.raises(InputError, match="line 1: field 'text1' holds a lone surrogate"):
        list(read_pairs_jsonl(bad))
    model = ["infer", "contrastive", "--model", str(models["bi"]), "--device", "cpu", "--precision", "no"]
    out = tmp_path / "out.jsonl"
    stopped = _invoke(model + ["--input", str(bad), "--output", str(out)])
    assert (
        stopped.exit_code == InputError.exit_code
        and "lone surrogate" in stopped.stderr
        and "--skip-bad-lines" in stopped.stderr
    )
    skipped = _invoke(model + ["--input", str(bad), "--output", str(out), "--skip-bad-lines"])
    assert skipped.exit_code == 0, skipped.output
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [2]
    # argv bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)
    argv = _invoke(model + ["--text1", "The captain spoke \udcff to the crew", "--text2", PASSAGES[1]])
    assert argv.exit_code == InputError.exit_code and "text1 is not valid UTF-8" in argv.stderr
    assert "Traceback" not in argv.output and len(argv.stderr.strip().splitlines()) == 1
    stdin = _invoke(model, input='{"text1": "a \\ud800 b", "text2": "c d e"}')
    assert stdin.exit_code == InputError.exit_code and "text1 is not valid UTF-8" in stdin.stderr
    matcher = Matcher.from_pretrained(models["bi"], device="cpu", precision="no")
    with pytest.raises(InputError, match="pair 1: text2 holds a lone surrogate"):
        matcher.score(PASSAGES[0], "x \ud800 y")


def test_batch_size_must_be_positive(models, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"text1": a, "text2": b} for a, b in _pairs()[:3]])
    for value in ("0", "-3"):
        result = _invoke(
            [
                "infer",
                "contrastive",
                "--model",
                str(models["bi"]),
                "--device",
                "cpu",
                "--input",
                str(pairs),
                "--output",
                str(tmp_path / "o.jsonl"),
                "--batch-size",
                value,
            ]
        )
        assert result.exit_code == 2 and "--batch-size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.jsonl").exists()
    matcher = Matcher.from_pretrained(models["bi"], device="cpu", precision="no")
    for value in (0, -3):
        with pytest.raises(InputError, match="batch size must be"):
            matcher.score_many(_pairs()[:2], batch_size=value)
        with pytest.raises(InputError, match="batch size must be"):
            matcher.score_file(pairs, tmp_path / "o.jsonl", batch_size=value)


def test_unwritable_output_fails_before_scoring(models, tmp_path):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"text1": a, "text2": b} for a, b in _pairs()[:3]])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    result = _invoke(
        [
            "infer",
            "contrastive",
            "--model",
            str(models["bi"]),
            "--device",
            "cpu",
            "--precision",
            "no",
            "--input",
            str(pairs),
            "--output",
            str(a_file / "sub" / "out.jsonl"),
        ]
    )
    assert result.exit_code == InputError.exit_code, result.output
    assert f"{a_file} is a file, not a folder" in result.stderr and "Traceback" not in result.output


def test_bad_line_message_suggests_skip_flag_only_where_it_exists(models, tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", ["not json"])
    with pytest.raises(InputError) as info:
        list(read_pairs_jsonl(bad, require_label=True))
    assert "--skip-bad-lines" not in str(info.value)
    evaluate = _invoke(
        [
            "evaluate",
            "--model",
            str(models["bi"]),
            "--pairs",
            str(bad),
            "--report",
            str(tmp_path / "r"),
            "--precision",
            "no",
        ]
    )
    assert (
        evaluate.exit_code == InputError.exit_code
        and "line 1" in evaluate.stderr
        and "--skip-bad-lines" not in evaluate.stderr
    )
    calibrate = _invoke(["calibrate", "--model", str(models["bi"]), "--pairs", str(bad), "--precision", "no"])
    assert (
        calibrate.exit_code == InputError.exit_code
        and "line 1" in calibrate.stderr
        and "--skip-bad-lines" not in calibrate.stderr
    )
    infer = _invoke(
        [
            "infer",
            "contrastive",
            "--model",
            str(models["bi"]),
            "--device",
            "cpu",
            "--input",
            str(bad),
            "--output",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert infer.exit_code == InputError.exit_code and "or pass --skip-bad-lines" in infer.stderr


def test_model_kind_without_bookmatch_config(models, tmp_path):
    import shutil

    from bookmatch.inference import CROSS_ENCODER, detect_model_kind

    bi = tmp_path / "bi" / "final"
    shutil.copytree(models["bi"], bi)
    (bi / "bookmatch_config.json").unlink()
    with pytest.raises(ModelLoadError, match="no bookmatch_config.json"):
        detect_model_kind(bi)
    result = _invoke(
        ["infer", "contrastive", "--model", str(bi), "--device", "cpu", "--text1", PASSAGES[0], "--text2", PASSAGES[1]]
    )
    assert (
        result.exit_code == ModelLoadError.exit_code
        and "bookmatch_config.json" in result.stderr
        and "cross-encoder" not in result.stderr
    )
    cross = tmp_path / "cross" / "final"
    shutil.copytree(models["cross"], cross)
    (cross / "bookmatch_config.json").unlink()
    assert detect_model_kind(cross) == CROSS_ENCODER  # its config.json names a sequence classifier


def test_two_stage_warns_when_the_cross_encoder_truncates_a_pair(models):
    from bookmatch.inference import Matcher as M

    long_a = " ".join([PASSAGES[0], PASSAGES[2], PASSAGES[4]])  # each text fits the cross-encoder's 128 tokens...
    long_b = " ".join([PASSAGES[1], PASSAGES[3], PASSAGES[5]])  # ...the pair does not
    all_cross = M.from_pretrained(
        models["bi"], cross_model=models["cross"], device="cpu", precision="no", prefilter_threshold=0.0
    )
    tokens = all_cross.cross.pair_token_lengths([long_a], [long_b])[0]
    assert tokens > all_cross.cross.max_text_tokens
    result = all_cross.score(long_a, long_b)
    assert result.stage == "cross-encoder"
    assert any("together are longer than the cross-encoder's 128 tokens" in w for w in result.warnings), result.warnings
    # half a passage a side: within 128 tokens whichever tokenizer the tiny encoder trained (it depends on the corpus)
    short_a, short_b = PASSAGES[0][:64], PASSAGES[1][:64]
    assert all_cross.cross.pair_token_lengths([short_a], [short_b])[0] <= 128
    short = all_cross.score(short_a, short_b)
    assert not any("longer than" in w for w in short.warnings)
    # Pairs the bi-encoder decides get no warning from the cross-encoder's limit, even a text past it alone.
    longer = " ".join([long_a, long_b])
    assert all_cross.cross.pair_token_lengths([longer], ["x"])[0] > 128
    none_cross = M.from_pretrained(
        models["bi"], cross_model=models["cross"], device="cpu", precision="no", prefilter_threshold=1.0
    )
    for a, b in ((long_a, long_b), (longer, PASSAGES[1])):
        result = none_cross.score(a, b)
        if result.stage == "bi-encoder":
            assert not any("longer than" in w for w in result.warnings), result.warnings


def test_byte_order_marks_and_bad_devices(models, tmp_path):
    pairs = tmp_path / "bom.jsonl"
    pairs.write_bytes(
        b"\xef\xbb\xbf" + (json.dumps({"text1": PASSAGES[0], "text2": PASSAGES[1]}) + "\n").encode("utf-8")
    )
    assert [number for number, _ in read_pairs_jsonl(pairs)] == [1]
    base = ["infer", "contrastive", "--model", str(models["bi"])]
    for device, expected in (("bogus", "is not a device torch knows"), ("cuda:7", "no such CUDA GPU")):
        result = _invoke(base + ["--device", device, "--text1", PASSAGES[0], "--text2", PASSAGES[1]])
        assert result.exit_code == InputError.exit_code and expected in result.stderr, result.output
