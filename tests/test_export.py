"""`bookmatch export sentence-transformers`: the exported model encodes to the bi-encoder's projection."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from bookmatch.cli import main
from bookmatch.errors import InputError

TEXTS = [
    "The ship left the harbour at dawn, and by noon the coast had sunk below the grey horizon.",
    "Short text.",
    "She read the letter twice, folded it, and put it in the drawer with the others. " * 12,  # truncated at 64 tokens
]


def test_sentence_transformers_export_matches_projection(tiny_encoder_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from bookmatch.models.bi_encoder import BiEncoder

    torch.manual_seed(0)
    model = BiEncoder.from_backbone(
        str(tiny_encoder_dir), projection_dim=16, classifier_hidden_dim=32, max_seq_length=64
    )
    model.save_pretrained(tmp_path / "bi" / "final")
    out = tmp_path / "st"
    result = CliRunner().invoke(
        main, ["export", "sentence-transformers", "--model", str(tmp_path / "bi" / "final"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output

    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 64
    exported = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))
    loaded = BiEncoder.from_pretrained(tmp_path / "bi" / "final")
    windows = loaded.encode_texts(TEXTS).projected
    loaded.config.long_texts = "truncate"  # sentence-transformers reads one window
    reference = loaded.encode_texts(TEXTS).projected
    assert exported.shape == reference.shape == (3, 16)
    assert torch.allclose(exported, reference, atol=1e-5)
    # the texts that fit agree with our default too; the long one is read whole there, so it differs
    assert torch.allclose(exported[:2], windows[:2], atol=1e-5) and not torch.allclose(
        exported[2], windows[2], atol=1e-3
    )


def test_export_refuses_a_cross_encoder(tiny_encoder_dir, tmp_path):
    from bookmatch.models.cross_encoder import CrossEncoder

    CrossEncoder.from_backbone(str(tiny_encoder_dir), max_seq_length=64).save_pretrained(tmp_path / "cross" / "final")
    result = CliRunner().invoke(
        main,
        [
            "export",
            "sentence-transformers",
            "--model",
            str(tmp_path / "cross" / "final"),
            "--out",
            str(tmp_path / "st"),
        ],
    )
    assert result.exit_code == InputError.exit_code and "not a bi-encoder" in result.stderr
    assert not (tmp_path / "st").exists()
