"""`bookmatch infer`: score one pair (texts, files or a JSON object on stdin) or a JSONL file of pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bookmatch.cli.options import precision_option
from bookmatch.errors import InputError

TRUNCATION_NOTE = (
    "The bi-encoder reads a long text whole, in windows of max_seq_length tokens (up to its max_windows); "
    "the cross-encoder truncates a pair to its max_seq_length. Texts cut short and very short texts are scored with a warning."
)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _decode(data: bytes, where: str) -> str:
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")  # a byte-order mark is not text
    if "\ufffd" in text and "\ufffd".encode("utf-8") not in data:
        _warn(f"{where} is not valid UTF-8: undecodable bytes were replaced by U+FFFD")
    return text


def _read_file(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return _decode(Path(path).read_bytes(), path)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err


def _read_pair(text1, text2, file1, file2) -> tuple[str, str]:
    from bookmatch.inference import is_valid_unicode

    text1 = text1 if text1 is not None else _read_file(file1)
    text2 = text2 if text2 is not None else _read_file(file2)
    if text1 is None and text2 is None:
        if sys.stdin.isatty():
            raise InputError(
                "no texts given: pass --text1/--text2, --file1/--file2, a JSON object on stdin, or --input FILE.jsonl"
            )
        raw = _decode(sys.stdin.buffer.read(), "stdin")
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(
                f'stdin is not a JSON object ({err.msg} at line {err.lineno}); send {{"text1": ..., "text2": ...}}'
            ) from err
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("text1", "text2")):
            raise InputError('stdin JSON must be an object with string fields "text1" and "text2"')
        text1, text2 = obj["text1"], obj["text2"]
    if text1 is None or text2 is None:
        raise InputError("give both texts: --text1/--file1 and --text2/--file2")
    for name, text in (("text1", text1), ("text2", text2)):
        if not text.strip():
            raise InputError(f"{name} is empty: give two non-empty passages")
        if not is_valid_unicode(text):
            # argv bytes that are not UTF-8 arrive as lone surrogates, as does a JSON "\ud800": the tokenizer
            # cannot take either, and guessing what was meant would score a different text.
            raise InputError(
                f"{name} is not valid UTF-8 text (it holds undecodable bytes or a lone surrogate): "
                f"pass UTF-8 text, or put it in a file and use --file{name[-1]}"
            )
    return text1, text2


def _check_modes(text1, text2, file1, file2, input_path, output_path) -> None:
    """Refuse option mixes that would silently ignore some of the options (before any model is loaded)."""
    if input_path is not None and any(v is not None for v in (text1, text2, file1, file2)):
        raise InputError("--input scores a file of pairs: drop --text1/--text2/--file1/--file2, or drop --input")
    if input_path is None and output_path is not None:
        raise InputError("--output is for batch mode: add --input FILE.jsonl (one pair is printed as JSON instead)")
    if input_path is not None and output_path is None:
        raise InputError("--input needs --output (the JSONL file to write)")


def _run(
    matcher, text1, text2, file1, file2, input_path, output_path, batch_size, skip_bad_lines, style_sim, explain=False
):
    from bookmatch.progress import summary_line

    if input_path is not None and explain:
        raise InputError("--explain is for one pair: drop it in batch mode (--input), or score the pair on its own")
    if input_path is not None:
        report = matcher.score_file(
            input_path, output_path, batch_size=batch_size, skip_bad_lines=skip_bad_lines, style=style_sim
        )
        for message in report.bad_lines[:5]:
            _warn(f"skipped {message}")
        if report.skipped > 5:
            _warn(f"skipped {report.skipped - 5} more bad line(s)")
        if report.short_texts:
            _warn(f"{report.short_texts} pair(s) hold very short texts: their scores are unreliable")
        if report.truncated_texts:
            _warn(
                f"{report.truncated_texts} pair(s) hold texts longer than the model reads: only their start was scored"
            )
        click.echo(summary_line("infer: scored", report.scored, report.seconds, "pairs"), err=True)
        return
    text1, text2 = _read_pair(text1, text2, file1, file2)
    result = matcher.score(text1, text2)
    for message in result.warnings:
        _warn(message)
    answer = result.to_dict(style=style_sim)
    if explain:
        from bookmatch.explain import explain_pair

        answer["evidence"] = explain_pair(matcher, text1, text2).to_dict()
    click.echo(json.dumps(answer))


def _common(func):
    options = [
        click.option("--text1", default=None, help="First passage."),
        click.option("--text2", default=None, help="Second passage."),
        click.option(
            "--file1", type=click.Path(dir_okay=False), default=None, help="Read the first passage from a file."
        ),
        click.option(
            "--file2", type=click.Path(dir_okay=False), default=None, help="Read the second passage from a file."
        ),
        click.option(
            "--input",
            "input_path",
            type=click.Path(dir_okay=False, allow_dash=True),
            default=None,
            help="Batch mode: JSONL with text1, text2 (and optional id); - or /dev/stdin reads stdin.",
        ),
        click.option(
            "--output",
            "output_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Batch mode: JSONL to write (appears when complete).",
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Texts per forward pass."
        ),
        click.option(
            "--skip-bad-lines",
            is_flag=True,
            help="Batch mode: skip lines that are not JSON or lack a field, instead of stopping.",
        ),
        click.option("--style-sim", is_flag=True, help="Also report style_similarity."),
        click.option(
            "--explain",
            is_flag=True,
            help="One pair: add per-sentence evidence (bi-encoder margin lost per sentence left out) and shared names.",
        ),
        click.option("--device", default=None, help="torch device [default: cuda if available, else cpu]."),
        precision_option("auto"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def infer():
    """Score pairs of passages: same book or not (and, on request, style similarity)."""


@infer.command(epilog=TRUNCATION_NOTE)
@click.option(
    "--model", "model_dir", required=True, type=click.Path(file_okay=False), help="The bi-encoder's final/ folder."
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Decision threshold [default: calibration.json beside the model, else 0.5].",
)
@_common
def contrastive(
    model_dir,
    threshold,
    text1,
    text2,
    file1,
    file2,
    input_path,
    output_path,
    batch_size,
    skip_bad_lines,
    style_sim,
    explain,
    device,
    precision,
):
    """Bi-encoder only. Prints JSON: same_book, confidence, probability[, style_similarity]."""
    _check_modes(text1, text2, file1, file2, input_path, output_path)
    from bookmatch.inference import Matcher

    matcher = Matcher.from_pretrained(model_dir, device=device, threshold=threshold, precision=precision)
    _run(matcher, text1, text2, file1, file2, input_path, output_path, batch_size, skip_bad_lines, style_sim, explain)


@infer.command("two-stage", epilog=TRUNCATION_NOTE)
@click.option(
    "--bi-model",
    "bi_model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The bi-encoder's final/ folder.",
)
@click.option(
    "--cross-model",
    "cross_model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The cross-encoder's final/ folder.",
)
@click.option(
    "--prefilter-threshold",
    type=float,
    default=None,
    help="Bi-encoder probability below which the answer is 'different book' at once [default: the bi-encoder's calibrated threshold, else 0.5].",
)
@click.option(
    "--cross-threshold",
    type=float,
    default=None,
    help="Cross-encoder decision threshold [default: its calibration.json, else 0.5].",
)
@_common
def two_stage(
    bi_model_dir,
    cross_model_dir,
    prefilter_threshold,
    cross_threshold,
    text1,
    text2,
    file1,
    file2,
    input_path,
    output_path,
    batch_size,
    skip_bad_lines,
    style_sim,
    explain,
    device,
    precision,
):
    """Bi-encoder prefilter, cross-encoder decision. Output names the deciding stage."""
    _check_modes(text1, text2, file1, file2, input_path, output_path)
    from bookmatch.inference import Matcher

    matcher = Matcher.from_pretrained(
        bi_model_dir,
        cross_model=cross_model_dir,
        device=device,
        prefilter_threshold=prefilter_threshold,
        cross_threshold=cross_threshold,
        precision=precision,
    )
    _run(matcher, text1, text2, file1, file2, input_path, output_path, batch_size, skip_bad_lines, style_sim, explain)
