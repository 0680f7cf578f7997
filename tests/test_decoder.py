"""Decoder backbones: a tiny random Llama-shaped causal LM under the bi-encoder, with LoRA adapters.

EOS appended in every tokenizing path, last-token pooling, frozen base + trainable adapters and heads, save /
load / merge, training through the CLI (then inference, export and a second stage from the adapter), GradCache,
resume after a kill, and DDP vs DeepSpeed ZeRO-2 on two CPU processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_TEXTS
from safetensors.torch import load_file
from test_resume import KILL_LAUNCHER, data_dir  # noqa: F401  (data_dir is a fixture)
from test_training import _cli, _synthetic_books, make_pair_dataset

from bookmatch.errors import ModelLoadError

LONG = "She read the letter twice, folded it, and put it in the drawer with the others. " * 8
TEXTS = [SAMPLE_TEXTS[0], "Short text.", LONG, SAMPLE_TEXTS[3]]


@pytest.fixture(scope="module")
def tiny_decoder_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random Llama with a tokenizer that puts <s> first and no EOS (as Llama's does)."""
    from bookmatch.models.tiny import build_tiny_decoder

    return build_tiny_decoder(tmp_path_factory.mktemp("tiny_decoder"), list(SAMPLE_TEXTS) + [LONG])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return make_pair_dataset(
        tmp_path_factory.mktemp("decoder_pairs") / "data", _synthetic_books(9, 12, seed=1), n_train=64, n_val=24
    )


def _bi(decoder_dir: Path, **values):
    from bookmatch.models.bi_encoder import BiEncoder

    settings = dict(projection_dim=8, classifier_hidden_dim=16, max_seq_length=16, lexical_buckets=64)
    settings.update(lexical_top_k=4, name_top_k=0, base_dtype="float32")
    return BiEncoder.from_backbone(str(decoder_dir), **(settings | values))


def _randomise_adapters(model) -> None:
    """LoRA starts with B = 0 (an identity update): give it weights, so merged vs unmerged means something."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


# ---------------------------------------------------------------------------------------------------------------
# tokenizing and pooling
# ---------------------------------------------------------------------------------------------------------------


def test_decoder_is_detected_and_eos_ends_every_input(tiny_decoder_dir, tiny_encoder_dir):
    from bookmatch.training.features import bi_encoder_arrays

    model = _bi(tiny_decoder_dir)
    tok = model.tokenizer
    eos, bos = tok.eos_token_id, tok.bos_token_id
    assert model.config.backbone_kind == "decoder" and model.config.pooling == "last"
    assert _bi(tiny_encoder_dir).config.backbone_kind == "encoder"  # auto: BERT stays an encoder
    assert tok.padding_side == "right" and tok.pad_token_id is not None
    plain = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]

    # model.tokenize (training arrays, "first" window): truncated, <s> kept first and </s> last
    for ids, text_ids in zip(model.tokenize(TEXTS)["input_ids"], plain):
        assert ids[0] == bos and ids[-1] == eos and len(ids) <= 16
        assert ids[1:-1] == text_ids[: len(ids) - 2]
    # inference windows: each a full input ending in </s>; together they cover the text exactly once
    inputs, owners = model.window_inputs(TEXTS)
    assert len(inputs) > len(TEXTS)  # the long text has several windows
    for owner, text_ids in enumerate(plain):
        windows = [ids for ids, o in zip(inputs, owners) if o == owner]
        assert all(w[0] == bos and w[-1] == eos and len(w) <= 16 for w in windows)
        assert [t for w in windows for t in w[1:-1]] == text_ids
    # random training windows
    for ids in model.sampled_window_inputs(TEXTS, [(1, i) for i in range(len(TEXTS))]):
        assert ids[0] == bos and ids[-1] == eos and len(ids) <= 16
    # the cached training arrays, both windows: the last non-padding token of every row is </s>
    for window in ("first", "random"):
        arrays = bi_encoder_arrays(TEXTS, TEXTS[::-1], model, window=window, seed=5)
        for side in ("a", "b"):
            seq = arrays.sequences[side]
            assert (seq.ids[np.arange(len(TEXTS)), seq.lengths - 1] == eos).all()


def test_last_token_pooling_reads_the_last_attended_position():
    from bookmatch.models.pooling import pool

    hidden = torch.randn(3, 5, 4)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert torch.equal(pool(hidden, right, "last"), torch.stack([hidden[0, 2], hidden[1, 4], hidden[2, 0]]))
    assert torch.equal(pool(hidden, left, "last"), hidden[:, 4])


def test_padding_does_not_change_a_texts_embedding(tiny_decoder_dir):
    """Right padding and the causal mask: a text alone and in a padded batch gets the same vector."""
    model = _bi(tiny_decoder_dir, long_texts="truncate")
    _randomise_adapters(model)
    together = model.encode_texts(TEXTS, batch_size=4)
    alone = [model.encode_texts([t]) for t in TEXTS]
    for i, single in enumerate(alone):
        assert torch.allclose(together.pooled[i], single.pooled[0], atol=1e-5)
    assert not torch.allclose(together.pooled[0], together.pooled[1], atol=1e-3)


def test_a_qwen2_shaped_decoder_round_trips(tmp_path):
    from bookmatch.models.bi_encoder import BiEncoder
    from bookmatch.models.tiny import build_tiny_decoder

    folder = build_tiny_decoder(tmp_path / "qwen2", list(SAMPLE_TEXTS), family="qwen2")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2"
    model = _bi(folder)
    assert (
        model.config.backbone_kind == "decoder"
        and model.tokenizer("word")["input_ids"][-1] == model.tokenizer.eos_token_id
    )
    _randomise_adapters(model)
    model.save_pretrained(tmp_path / "saved")
    again = BiEncoder.from_pretrained(tmp_path / "saved").encode_texts(TEXTS)
    assert torch.allclose(again.projected, model.encode_texts(TEXTS).projected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# what trains, and in which dtype
# ---------------------------------------------------------------------------------------------------------------


def test_only_lora_and_heads_train_and_the_base_is_bf16(tiny_decoder_dir):
    model = _bi(tiny_decoder_dir, base_dtype="bfloat16")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        "lora_" in name or name.startswith(("projection.", "classifier.")) for name in trainable
    ), trainable
    assert any("lora_A" in name for name in trainable) and any("classifier" in name for name in trainable)
    lora_targets = {name.split(".")[-4] for name in trainable if "lora_A" in name}
    assert lora_targets == {"q_proj", "v_proj"}  # the default targets, two layers each
    frozen = {p.dtype for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for name, p in model.named_parameters() if p.requires_grad} == {torch.float32}
    embeddings = model.encode_texts(TEXTS[:2])
    assert embeddings.pooled.dtype == torch.float32 and torch.isfinite(embeddings.projected).all()
    # a forward + backward reaches the adapters through the frozen bf16 base
    ids = model.tokenizer.pad({"input_ids": model.tokenize(TEXTS[:2])["input_ids"]}, return_tensors="pt")
    _, projected = model.encode(ids["input_ids"], ids["attention_mask"])
    projected.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_A" in n}
    assert all(g is not None for g in grads.values())


def test_lora_settings_reach_the_adapters(tiny_decoder_dir):
    model = _bi(tiny_decoder_dir, lora_r=4, lora_alpha=8, lora_target_modules="q_proj,k_proj,o_proj")
    shapes = {n: p.shape for n, p in model.named_parameters() if "lora_A" in n}
    assert {n.split(".")[-4] for n in shapes} == {"q_proj", "k_proj", "o_proj"}
    assert all(shape[0] == 4 for shape in shapes.values())
    layer = model.encoder.base_model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / 4)
    with pytest.raises(ModelLoadError, match="cannot load backbone"):
        _bi(tiny_decoder_dir, lora_target_modules="no_such_layer")


# ---------------------------------------------------------------------------------------------------------------
# saving, loading, merging
# ---------------------------------------------------------------------------------------------------------------


def test_adapter_folder_loads_and_merges_to_the_same_model(tiny_decoder_dir, tmp_path):
    import shutil

    from bookmatch.models.bi_encoder import BiEncoder

    base = tmp_path / "base"
    shutil.copytree(tiny_decoder_dir, base)
    model = _bi(base)
    _randomise_adapters(model)
    model.fit_lexical(SAMPLE_TEXTS)
    reference = model.encode_texts(TEXTS)
    model.save_pretrained(tmp_path / "adapter")
    model.save_pretrained(tmp_path / "merged", merge=True)
    assert not model.config.lora_merged and model.is_lora  # merging saved a copy

    heads = load_file(str(tmp_path / "adapter" / "model.safetensors"))
    assert heads and not any(k.startswith("encoder.") for k in heads)  # the base is not copied
    assert (tmp_path / "adapter" / "adapter" / "adapter_config.json").exists()
    merged_weights = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert (
        not any("lora_" in k for k in merged_weights) and "encoder.layers.0.self_attn.q_proj.weight" in merged_weights
    )

    for folder in ("adapter", "merged"):
        loaded = BiEncoder.from_pretrained(tmp_path / folder)
        assert loaded.tokenizer("word")["input_ids"][-1] == loaded.tokenizer.eos_token_id
        again = loaded.encode_texts(TEXTS)
        assert torch.allclose(again.projected, reference.projected, atol=1e-5), folder
        assert torch.equal(again.style, reference.style)
    # the adapter folder needs its base; the merged one stands alone
    shutil.rmtree(base)
    assert torch.allclose(
        BiEncoder.from_pretrained(tmp_path / "merged").encode_texts(TEXTS).projected, reference.projected, atol=1e-5
    )
    with pytest.raises(ModelLoadError, match="not a local folder"):
        BiEncoder.from_pretrained(tmp_path / "adapter")


# ---------------------------------------------------------------------------------------------------------------
# training, inference, export, a second stage
# ---------------------------------------------------------------------------------------------------------------

DECODER_RUN = [
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--max-seq-length",
    "32",
    "--eval-steps",
    "3",
    "--save-steps",
    "3",
    "--cpu",
    "--projection-dim",
    "8",
    "--base-dtype",
    "float32",
    "--lexical-buckets",
    "64",
]


def _train(data: Path, model: Path, out: Path, *extra: str) -> dict:
    result = _cli(
        ["train", "contrastive", "--data", str(data), "--model", str(model), "--out", str(out)]
        + DECODER_RUN
        + list(extra)
    )
    assert result.exit_code == 0, result.output
    return json.loads((out / "train_summary.json").read_text())


def test_train_infer_export_then_continue_from_the_adapter(pairs, tiny_decoder_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from bookmatch.inference import Matcher
    from bookmatch.models.bi_encoder import BiEncoder

    first = tmp_path / "first"
    summary = _train(pairs, tiny_decoder_dir, first, "--lr", "5e-3", "--head-lr", "5e-3", "--max-steps", "6")
    assert summary["global_step"] == 6
    assert "backbone_kind: auto" in (first / "config.yaml").read_text()
    stored = json.loads((first / "final" / "bookmatch_config.json").read_text())
    assert stored["backbone_kind"] == "decoder" and stored["pooling"] == "last" and not stored["lora_merged"]
    adapter = load_file(str(first / "final" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())  # B started at 0: it trained
    # the checkpoint holds the whole module: the base there is the base we started from (frozen)
    base = load_file(str(tiny_decoder_dir / "model.safetensors"))
    checkpoint = load_file(str(first / "checkpoint-3" / "model.safetensors"))
    key = "bi_encoder.encoder.base_model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert torch.equal(checkpoint[key], base["model.layers.0.self_attn.q_proj.weight"])

    # inference through the Matcher
    matcher = Matcher.from_pretrained(first / "final", device="cpu")
    scores = matcher.score_many([(TEXTS[0], TEXTS[3]), (LONG, TEXTS[1])])
    assert len(scores) == 2

    # export: sentence-transformers reads the merged decoder, pools the last token, and its tokenizer appends EOS
    result = _cli(["export", "sentence-transformers", "--model", str(first / "final"), "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    exported = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))
    loaded = BiEncoder.from_pretrained(first / "final")
    loaded.config.long_texts = "truncate"  # sentence-transformers reads one window
    assert torch.allclose(exported, loaded.encode_texts(TEXTS).projected, atol=1e-5)

    # stage 2: from the first run's adapter and heads, at a lower learning rate
    stage2 = BiEncoder.from_backbone(
        str(tiny_decoder_dir),
        adapter=first / "final",
        base_dtype="float32",
        projection_dim=8,
        max_seq_length=32,
        lexical_buckets=64,
    )
    start = stage2.state_dict()
    for name, value in loaded.state_dict().items():
        if "lora_" in name or name.startswith(("projection.", "classifier.")):
            assert torch.equal(start[name], value), name
    second = tmp_path / "second"
    summary = _train(
        pairs,
        tiny_decoder_dir,
        second,
        "--adapter-path",
        str(first / "final"),
        "--lr",
        "1e-3",
        "--max-steps",
        "3",
        "--gradient-checkpointing",
    )
    assert summary["global_step"] == 3
    assert "adapter_path: " + str(first / "final") in (second / "config.yaml").read_text()
    moved = load_file(str(second / "final" / "adapter" / "adapter_model.safetensors"))
    assert moved.keys() == adapter.keys() and any(not torch.equal(moved[k], adapter[k]) for k in adapter)


def test_merge_lora_option_and_bad_adapter_path(pairs, tiny_decoder_dir, tiny_encoder_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from bookmatch.models.bi_encoder import BiEncoder

    _train(pairs, tiny_decoder_dir, tmp_path / "run", "--max-steps", "3", "--merge-lora")
    final = tmp_path / "run" / "final"
    assert not (final / "adapter").exists() and json.loads((final / "bookmatch_config.json").read_text())["lora_merged"]
    loaded = BiEncoder.from_pretrained(final)
    loaded.config.long_texts = "truncate"
    result = _cli(["export", "sentence-transformers", "--model", str(final), "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    exported = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))
    assert torch.allclose(exported, loaded.encode_texts(TEXTS).projected, atol=1e-5)
    result = _cli(
        [
            "train",
            "contrastive",
            "--data",
            str(pairs),
            "--model",
            str(tiny_decoder_dir),
            "--out",
            str(tmp_path / "bad"),
            *DECODER_RUN,
            "--adapter-path",
            str(tmp_path),
        ]
    )
    assert result.exit_code == ModelLoadError.exit_code and "holds no LoRA adapter" in result.stderr
    with pytest.raises(ModelLoadError, match="needs a decoder"):
        BiEncoder.from_backbone(str(tiny_encoder_dir), adapter=final)


def test_gradcache_gives_the_plain_loss_and_gradients(pairs, tiny_decoder_dir):
    """GradCache changes memory, not the update: the same loss and the same gradients for adapters and heads
    (dropout off; compared before the optimizer, whose first Adam step would magnify float noise)."""
    import contextlib

    from datasets import load_from_disk

    from bookmatch.training.features import bi_encoder_arrays
    from bookmatch.training.gradcache import CachedSupCon
    from bookmatch.training.tasks import ContrastiveModule, LossWeights, cached_contrastive_step

    train = load_from_disk(str(pairs))["train"].select(range(8))
    torch.manual_seed(0)
    model = _bi(tiny_decoder_dir, lora_dropout=0.0, dropout=0.0, max_seq_length=32)
    _randomise_adapters(model)  # with B = 0 the adapters' A would get no gradient at all
    model.fit_lexical(list(train["text1"]) + list(train["text2"]))
    module = ContrastiveModule(model, LossWeights())
    arrays = bi_encoder_arrays(list(train["text1"]), list(train["text2"]), model)
    books = {b: i for i, b in enumerate(sorted(set(train["book1"]) | set(train["book2"])))}
    arrays.add_column("label", np.asarray(train["label"], dtype=np.int64))
    for side, column in (("a", "book1"), ("b", "book2")):
        arrays.add_column(f"work_{side}", np.asarray([books[b] for b in train[column]], dtype=np.int64))
        arrays.add_column(f"topic_{side}", np.zeros(len(train), dtype=np.int64))
    batch = arrays.batch(range(8))
    module.train()

    def gradients() -> dict[str, torch.Tensor]:
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
        module.zero_grad(set_to_none=True)
        return grads

    plain_loss = module(batch)["loss"]
    plain_loss.backward()
    plain = gradients()

    class NoAutocast:  # the step's only use of the accelerator: fp32 here
        autocast = staticmethod(contextlib.nullcontext)

    logged = cached_contrastive_step(module, batch, CachedSupCon(module.supcon, mini_batch_size=3), NoAutocast())
    cached = gradients()
    assert float(logged["loss"]) == pytest.approx(float(plain_loss), rel=1e-5)
    assert any("lora_A" in n for n in plain) and all(g.abs().max() > 0 for n, g in plain.items() if "lora_" in n)
    for name, grad in plain.items():
        assert torch.allclose(grad, cached[name], atol=1e-6, rtol=1e-4), name


# ---------------------------------------------------------------------------------------------------------------
# resume after a kill; two processes (DDP with gathered SupCon, DeepSpeed ZeRO-2)
# ---------------------------------------------------------------------------------------------------------------

DECODER_FLAGS = ["--base-dtype", "float32", "--lexical-buckets", "64"]


def _final_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A LoRA decoder's trained weights: its heads and its adapter."""
    return load_file(str(folder / "model.safetensors")) | {
        f"adapter.{k}": v for k, v in load_file(str(folder / "adapter" / "adapter_model.safetensors")).items()
    }


@pytest.mark.slow  # three CLI processes, ~1 min on an idle 2-core machine
def test_resume_after_kill_matches_uninterrupted(data_dir, tiny_decoder_dir, tmp_path):  # noqa: F811
    import os

    from test_resume import _args, _entry

    from bookmatch.training.checkpoint import latest_checkpoint

    def run(out: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
        args = _args("contrastive", data_dir, tiny_decoder_dir, out) + DECODER_FLAGS
        args += ["--max-steps", "6", "--eval-steps", "2", "--save-steps", "2", *extra]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        return subprocess.run(
            [sys.executable, *_entry(kill_at), *args],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    interrupted = tmp_path / "interrupted"
    killed = run(interrupted, kill_at=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert latest_checkpoint(interrupted).name == "checkpoint-2"  # the kill came after step 3, before a save at 4
    resumed = run(interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    b = json.loads((interrupted / "train_summary.json").read_text())
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [2, 4, 6]
    for ha, hb in zip(a["history"], b["history"]):
        for key in ("val_loss", "train_loss"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-5, abs=1e-6), (ha["step"], key)
    wa, wb = _final_weights(tmp_path / "straight" / "final"), _final_weights(interrupted / "final")
    assert wa.keys() == wb.keys() and any("lora_B" in k and v.abs().max() > 0 for k, v in wa.items())
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6), key
    # the checkpoints hold the whole training module, frozen base included
    ca = load_file(str(tmp_path / "straight" / "checkpoint-4" / "model.safetensors"))
    cb = load_file(str(interrupted / "checkpoint-4" / "model.safetensors"))
    assert all(torch.allclose(ca[k], cb[k], rtol=1e-5, atol=1e-6) for k in ca)


@pytest.mark.slow  # two 2-process runs, ~2 min on an idle 2-core machine
def test_ddp_with_gathered_supcon_and_zero2_train_the_same_adapter(data_dir, tiny_decoder_dir, tmp_path):  # noqa: F811
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (it comes with the gpu extra)")
    from test_deepspeed import _env, _zero_on_two_cpu_processes
    from test_resume import _args

    from bookmatch.models.bi_encoder import BiEncoder

    # both runs start from the same adapter and heads, read from files (not drawn from the seed)
    torch.manual_seed(0)
    start = BiEncoder.from_backbone(
        str(tiny_decoder_dir), projection_dim=8, max_seq_length=40, lexical_buckets=64, base_dtype="float32"
    )
    _randomise_adapters(start)
    start.save_pretrained(tmp_path / "start")

    def run(launcher: list[str], out: Path) -> subprocess.CompletedProcess:
        args = [a for a in _args("contrastive", data_dir, tiny_decoder_dir, out) if a != "--cpu"] + DECODER_FLAGS
        args += [
            "--max-steps",
            "4",
            "--eval-steps",
            "2",
            "--save-steps",
            "2",
            "--adapter-path",
            str(tmp_path / "start"),
        ]
        command = [sys.executable, "-m", *launcher, "-m", "bookmatch", *args]
        repo = Path(__file__).resolve().parents[1]
        return subprocess.run(command, cwd=repo, env=_env(), capture_output=True, text=True, timeout=900)

    ddp = run(["torch.distributed.run", "--nproc_per_node", "2"], tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    config = _zero_on_two_cpu_processes(tmp_path, 2)
    zero = run(["accelerate.commands.launch", "--config_file", str(config)], tmp_path / "zero")
    assert zero.returncode == 0, zero.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "zero" / "checkpoint-2").rglob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2  # DeepSpeed really ran, on both ranks

    a = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    b = json.loads((tmp_path / "zero" / "train_summary.json").read_text())
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [2, 4]
    for ha, hb in zip(a["history"], b["history"]):
        for key in ("val_loss", "train_loss", "train_contrastive_global"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-3, abs=1e-4), (ha["step"], key)
    wa, wb = _final_weights(tmp_path / "ddp" / "final"), _final_weights(tmp_path / "zero" / "final")
    assert wa.keys() == wb.keys() and any("lora_B" in k and v.abs().max() > 0 for k, v in wa.items())
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-3, atol=1e-4), key
