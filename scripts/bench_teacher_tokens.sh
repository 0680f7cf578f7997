#!/usr/bin/env bash
# Teacher logits as the pipeline computes them: after the cross-encoder's own training stage has cached the split's
# pair tokens (read back), against tokenizing the texts (that cache file moved aside), side by side, fp32 and bf16.
#
#   scripts/bench_teacher_tokens.sh DATA MODEL [REPEATS]
#
# DATA: a folder written by `bookmatch prepare`; MODEL: the backbone (e.g. a tiny encoder from
# bookmatch.models.tiny). A 2-step `train cross` on DATA gives the teacher (its cost per pair is a trained one's);
# each measurement is a 1-step `train contrastive` with that teacher and its teacher-logits cache emptied, and the
# line printed is the stage's own summary line.
set -uo pipefail
data="$1"
model="$2"
repeats="${3:-2}"
work="$(mktemp -d)"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m bookmatch train cross --data "$data" --model "$model" --out "$work/cross" --cpu --max-steps 2 \
    --batch-size 8 --eval-max-pairs 64 >"$work/cross.log" 2>&1 || { tail -5 "$work/cross.log"; exit 1; }
tokens="$(python - "$data" "$work/cross/final" <<'EOF' 2>/dev/null | tail -1
import sys
from datasets import load_from_disk
from bookmatch.models.cross_encoder import CrossEncoder
from bookmatch.training.data import texts_fingerprint
from bookmatch.training.features import arrays_path, cache_folder, cross_arrays_key
data, teacher = sys.argv[1], CrossEncoder.from_pretrained(sys.argv[2])
fingerprint = texts_fingerprint(load_from_disk(data)["train"])
print(arrays_path(cache_folder(data, data), cross_arrays_key(fingerprint, teacher)))
EOF
)"
[[ -f "$tokens" ]] || { echo "the cross stage left no pair tokens at $tokens"; exit 1; }

measure() {  # $1: reused | tokenized, $2: precision
    rm -f "$(dirname "$tokens")"/teacher_logits-*.npy
    rm -rf "$work/student"
    python -m bookmatch train contrastive --data "$data" --model "$model" --teacher "$work/cross/final" \
        --out "$work/student" --cpu --max-steps 1 --batch-size 8 --max-seq-length 64 --eval-max-pairs 64 \
        --mixed-precision "$2" >"$work/student.log" 2>&1
    echo "$1 $2: $(grep -o 'teacher logits: [0-9,]* pairs in .*' "$work/student.log")"
}
for ((repeat = 1; repeat <= repeats; repeat++)); do
    for precision in no bf16; do
        measure reused "$precision"
        mv "$tokens" "$tokens.aside"
        measure tokenized "$precision"
        mv "$tokens.aside" "$tokens"
    done
done
rm -rf "$work"
