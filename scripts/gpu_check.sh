#!/usr/bin/env bash
# Every GPU figure of issue 24 in at most two device calls and <= 9 minutes of device time, sized by wall time:
# each part runs under its own time budget and writes its results under $OUT as it goes, so a part that runs
# out of time costs only its own figure.
#
#   scripts/gpu_check.sh --part carry                          # HERE (no GPU): build gpu_carry/ (below)
#   scripts/gpu_check.sh --part setup,mfu                      # device call 1, carry gpu_carry/wheels gpu_carry/corpus.tar.xz
#   scripts/gpu_check.sh --part setup,pipeline,train,summary   # device call 2 (within ~30 s), carry gpu_carry/minilm
#   scripts/gpu_check.sh --tiny --part setup,pipeline,train,mfu,summary   # CPU, tiny settings (tests/test_gpu_check.py)
#
# A device call carries at most 64 MiB: MiniLM in fp16 (43 MiB) and the corpus as tar.xz (41 MiB) do not fit
# together, so call 1 carries the corpus and the wheels the GPU image lacks (datasets and its small deps; no
# faiss: gpu-small uses the torch k-NN) and unpacks/installs them under gpu_carry/ (ignored by git, kept while
# the machine stays warm), call 2 carries the model. Parts:
#   carry     gpu_carry/{wheels,corpus.tar.xz,minilm}: pip download, a tar.xz of the corpus, MiniLM saved in fp16
#   setup     install carried wheels, unpack the corpus, record versions and nvidia-smi ($OUT/env.txt)
#   mfu       scripts/bench_train.py, large size, 512 tokens, 32/64/128 pairs (goal 4's sweep), and the
#             sentence-transformers path at 32 pairs (<= 20 s each)
#   pipeline  `bookmatch pipeline --preset gpu-small --eval-pairs validation_pairs.jsonl` (goal 5's wall and AUC);
#             its log holds goal 1's `embedded chunks:` line, goal 2's `teacher logits:` line and the trainer's
#             `train contrastive:` line
#   train     scripts/bench_train.py on the pipeline's own data at the trainer's shape (MiniLM, 256 tokens,
#             64 pairs, real lengths): the bare step that goal 3 holds the trainer's step against; then the
#             teacher-logit stage alone (scripts/bench_stages.py); REAL_LENGTHS=1 adds large at real passage lengths
#             (goal 4's second figure, +40 s)
# Device time (estimated, not yet run on a GPU): call 1 ~2 min (start, wheels, corpus, 4 x 20 s), call 2 ~8 min
# (start, pipeline <= 360 s, 40 + 45 s).
#   summary   $OUT/summary.json (+ summary.txt): every figure parsed from the logs above
# Environment: OUT (default gpu_check_out), DEVICE (cuda, or cpu), BUDGET_S (per-part seconds, default per part),
# BOOKS, EVAL_PAIRS, MODEL (default gpu_carry/minilm, else sentence-transformers/all-MiniLM-L6-v2).
# --tiny: a tiny random encoder built on the spot, a few books, a few steps (what the CPU test runs).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
parts="setup,pipeline,train,summary"
tiny=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --part) parts="$2"; shift 2 ;;
        --tiny) tiny=1; shift ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-gpu_check_out}"
DEVICE="${DEVICE:-cuda}"
CARRY="${CARRY:-gpu_carry}"
mkdir -p "$OUT"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[[ -d "$CARRY/site" ]] && export PYTHONPATH="$PYTHONPATH:$here/$CARRY/site"
BOOKS="${BOOKS:-$( [[ -d ../shared/corpus/books ]] && echo ../shared/corpus/books || echo "$CARRY/corpus/books")}"
EVAL_PAIRS="${EVAL_PAIRS:-$(dirname "$BOOKS")/validation_pairs.jsonl}"
MODEL="${MODEL:-$( [[ -d "$CARRY/minilm" ]] && echo "$CARRY/minilm" || echo sentence-transformers/all-MiniLM-L6-v2)}"
(( tiny )) && MODEL="$OUT/tiny_model"

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log" >&2; }
# run NAME BUDGET_S COMMAND...: the command under a time limit, its output in $OUT/NAME.log, its status noted
run() {
    local name="$1" budget="${BUDGET_S:-$2}"; shift 2
    log "$name: up to ${budget} s: $*"
    local start=$SECONDS
    timeout --kill-after=10 "$budget" "$@" >"$OUT/$name.log" 2>&1
    local status=$?
    echo "$name status=$status seconds=$((SECONDS - start))" >>"$OUT/parts.txt"
    log "$name: status $status after $((SECONDS - start)) s"
    return 0
}

part_carry() {
    mkdir -p "$CARRY/wheels"
    python -m pip download --quiet --no-deps --dest "$CARRY/wheels" datasets dill multiprocess xxhash
    [[ -f "$CARRY/corpus.tar.xz" ]] || tar -C "$(dirname "$BOOKS")" -cJf "$CARRY/corpus.tar.xz" books validation_pairs.jsonl
    python - "$CARRY/minilm" <<'EOF'
import shutil, sys
import torch
from transformers import AutoModel, AutoTokenizer
from bookmatch.models.resolve import resolve_model_path
source = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
shutil.copytree(source, sys.argv[1], dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(source).save_pretrained(sys.argv[1])
EOF
    du -sh "$CARRY"/* | tee -a "$OUT/gpu_check.log"
}

part_setup() {
    if [[ -d "$CARRY/wheels" ]] && ! python -c "import datasets" 2>/dev/null; then
        python -m pip install --quiet --no-deps --target "$CARRY/site" "$CARRY"/wheels/*.whl
        export PYTHONPATH="$PYTHONPATH:$here/$CARRY/site"
    fi
    if [[ ! -d "$BOOKS" && -f "$CARRY/corpus.tar.xz" ]]; then
        mkdir -p "$CARRY/corpus" && tar -C "$CARRY/corpus" -xJf "$CARRY/corpus.tar.xz"
    fi
    {
        python -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
        python -c "import sentence_transformers, datasets; print('sentence-transformers', sentence_transformers.__version__, 'datasets', datasets.__version__)"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
        nproc
    } >"$OUT/env.txt" 2>&1
    if (( tiny )) && [[ ! -d "$OUT/tiny_model" ]]; then  # the tiny random encoder, its tokenizer trained on the pairs file
        python -c "import json, sys; from bookmatch.models.tiny import build_tiny_encoder
rows = [json.loads(line) for line in open(sys.argv[2], encoding='utf-8')][:200]
build_tiny_encoder(sys.argv[1], [r[k] for r in rows for k in ('text1', 'text2')])" "$OUT/tiny_model" "$EVAL_PAIRS"
    fi
    log "setup: books $BOOKS, model $MODEL, device $DEVICE"
}

part_pipeline() {
    local sets=(--set "prepare.miner_model=$MODEL" --set "cross.model=$MODEL" --set "contrastive.model=$MODEL")
    if (( tiny )); then
        sets=(--set "prepare.miner_model=$MODEL" --set "cross.model=$MODEL" --set "contrastive.model=$MODEL"
              --set prepare.workers=2 --set prepare.train_ratio=0.5 --set prepare.val_ratio=0.25 --set prepare.num_chunks_for_embed=8 --set prepare.n_negative_per_book=6
              --set 'prepare.holdout_authors=""' --set cross.max_steps=2 --set cross.eval_steps=2 --set cross.save_steps=2
              --set cross.max_seq_length=128 --set 'cross.mixed_precision="no"' --set contrastive.max_steps=2
              --set contrastive.eval_steps=2 --set contrastive.save_steps=2 --set 'contrastive.mixed_precision="no"'
              --set contrastive.max_seq_length=64 --set cross.preprocess_workers=0 --set contrastive.preprocess_workers=0
              --set cross.num_workers=0 --set contrastive.num_workers=0 --set evaluate.max_pairs=40
              --set cross.cpu=true --set contrastive.cpu=true)
    fi
    local start=$SECONDS
    run pipeline 360 python -m bookmatch pipeline --preset gpu-small --books "$BOOKS" --out "$OUT/pipeline" \
        --eval-pairs "$EVAL_PAIRS" "${sets[@]}"
    echo "pipeline_wall_s=$((SECONDS - start))" >>"$OUT/parts.txt"
}

part_train() {
    local data="$OUT/pipeline/data/processed"
    [[ -d "$data" ]] || { log "train: no prepared data at $data (run the pipeline part first)"; return 0; }
    if (( tiny )); then
        run train_bench 120 python scripts/bench_train.py --device "$DEVICE" --size tiny --seq-len 64 --batch-pairs 4 \
            --steps 3 --warmup 1 --paths ours --lengths-from "$data" --tokenizer "$MODEL" --json-out "$OUT/train_bench.json"
        run stages 300 python scripts/bench_stages.py --data "$data" --miner "$MODEL" --teacher-backbone "$MODEL" \
            --device "$DEVICE" --books 8 --pairs 40 --batch-size 16 --teacher-max-length 128 --json-out "$OUT/stages.json"
    else
        run train_bench 40 python scripts/bench_train.py --device "$DEVICE" --size minilm --seq-len 256 --batch-pairs 64 \
            --steps 30 --warmup 5 --paths ours --lengths-from "$data" --tokenizer "$MODEL" --json-out "$OUT/train_bench.json"
        # the teacher-logit stage alone (a random head costs what a trained one does): the pipeline logs it only
        # when its teacher reached min_teacher_auc
        run stages 45 python scripts/bench_stages.py --data "$data" --miner "$MODEL" --teacher-backbone "$MODEL" \
            --device cuda --stages teacher --pairs 20000 --batch-size 256 --json-out "$OUT/stages.json"
        (( ${REAL_LENGTHS:-0} )) && run mfu_real_lengths 40 python scripts/bench_train.py --device cuda --size large \
            --seq-len 512 --batch-pairs 32 --steps 8 --warmup 2 --lengths-from "$data" --tokenizer "$MODEL" \
            --json-out "$OUT/mfu_real_lengths.json"
    fi
}

part_mfu() {
    if (( tiny )); then
        run mfu_tiny 120 python scripts/bench_train.py --device "$DEVICE" --size tiny --seq-len 64 --batch-pairs 4 --steps 2 \
            --warmup 1 --json-out "$OUT/mfu_tiny.json"
        return 0
    fi
    for pairs in 32 64 128; do
        run "mfu_large_$pairs" 20 python scripts/bench_train.py --device cuda --size large --seq-len 512 --batch-pairs "$pairs" \
            --steps 8 --warmup 2 --paths ours --json-out "$OUT/mfu_large_$pairs.json"
    done
    run mfu_large_32_st 20 python scripts/bench_train.py --device cuda --size large --seq-len 512 --batch-pairs 32 --steps 8 \
        --warmup 2 --paths st --json-out "$OUT/mfu_large_32_st.json"
}

part_summary() {
    python - "$OUT" <<'EOF'
import glob, json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"parts": (out / "parts.txt").read_text().split("\n") if (out / "parts.txt").exists() else []}
log = (out / "pipeline.log").read_text(errors="replace") if (out / "pipeline.log").exists() else ""
patterns = {"mining": r"embedded chunks: ([\d,]+) chunks in ([\d.]+) s \(([\d,.]+) chunks/s\)",
            "teacher_logits": r"teacher logits: ([\d,]+) pairs in ([\d.]+) s \(([\d,.]+) pairs/s\)",
            "train": r"train (\w+): ([\d,]+) steps in ([\d.]+) s \(([\d,.]+) steps/s\)"}
for name, pattern in patterns.items():
    found = re.findall(pattern, log)
    if found:
        summary[name] = [list(f) for f in found]
for train in summary.get("train", []):
    task, steps, seconds = train[0], float(train[1].replace(",", "")), float(train[2])
    summary[f"trainer_step_s_{task}"] = seconds / max(steps, 1)
for name in ("test", "eval_pairs"):
    metrics = out / "pipeline" / "reports" / name / "metrics.json"
    if metrics.exists():
        figures = json.loads(metrics.read_text())
        summary[f"auc_{name}"] = (figures.get("calibrated") or figures.get("uncalibrated") or {}).get("auc")
pipeline_summary = out / "pipeline" / "pipeline_summary.json"
if pipeline_summary.exists():
    summary["pipeline"] = json.loads(pipeline_summary.read_text())
for path in sorted(glob.glob(str(out / "*.json"))):
    if Path(path).name not in ("summary.json", "stages.json"):
        try:
            rows = json.loads(Path(path).read_text())
        except ValueError:
            continue
        rows = rows.get("results", [rows]) if isinstance(rows, dict) else rows  # bench_train: {meta, results}
        summary[Path(path).stem] = [{k: r.get(k) for k in ("size", "path", "batch_pairs", "median_step_s", "mfu", "pairs_per_s",
                                                           "compiled", "pad_fraction")} for r in rows if isinstance(r, dict)]
stages = json.loads((out / "stages.json").read_text()) if (out / "stages.json").exists() else []
for row in stages:
    summary[f"stage_{row['stage']}_per_s"] = row["count"] / max(row["seconds"], 1e-9)
bench = summary.get("train_bench") or []
if bench and "trainer_step_s_contrastive" in summary and bench[0].get("median_step_s"):
    summary["trainer_over_bench_step"] = summary["trainer_step_s_contrastive"] / bench[0]["median_step_s"]
(out / "summary.json").write_text(json.dumps(summary, indent=1))
(out / "summary.txt").write_text("\n".join(f"{k}: {v}" for k, v in summary.items()) + "\n")
print(json.dumps(summary, indent=1))
EOF
}

IFS=',' read -r -a wanted <<<"$parts"
for part in "${wanted[@]}"; do
    case "$part" in
        carry|setup|pipeline|train|mfu|summary) "part_$part" ;;
        *) echo "gpu_check.sh: unknown part $part (carry, setup, mfu, pipeline, train, summary)" >&2; exit 2 ;;
    esac
done
