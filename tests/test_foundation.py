import pytest
from click.testing import CliRunner

from bookmatch.cli import main
from bookmatch.storage import atomic_directory, atomic_write_json, read_json


def test_tiny_encoder_loads(tiny_encoder_dir):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = AutoModel.from_pretrained(tiny_encoder_dir)
    batch = tokenizer(["Call me Ishmael.", "A second, longer sentence here."], padding=True, return_tensors="pt")
    out = model(**batch).last_hidden_state
    assert out.shape[0] == 2 and out.shape[-1] == 32


def test_atomic_directory_keeps_old_on_failure(tmp_path):
    target = tmp_path / "dataset"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_atomic_json_roundtrip(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": [1, 2]})
    assert read_json(tmp_path / "m.json") == {"a": [1, 2]}


def test_cli_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "book-text matcher" in result.output


def test_atomic_directory_recovers_from_a_kill_between_its_renames(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    # a run killed after moving the old folder aside, before moving its new one in, and one killed while
    # removing the old folder after the swap
    target.rename(tmp_path / ".model.old-4242")
    (tmp_path / ".model.tmp-x1").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_directory(target):
            raise RuntimeError("failed")
    assert (target / "a.txt").read_text() == "one"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / ".model.old-4243").mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("two")
    assert (target / "a.txt").read_text() == "two"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
