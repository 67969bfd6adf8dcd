#!/usr/bin/env bash
# distillery-server against the baseline a user would build (Python onnxruntime==1.31.1 behind
# FastAPI/uvicorn, one request per inference), serving the same artifact's model and tokenizer,
# driven by `distillery-worker loadtest` at concurrency 1, 16 and 64 with the held-out texts, in one
# run; then distillery-server alone at twice its measured capacity (open loop). Prints the tables
# and the ratios. Outside CI: the baseline's packages go into their own virtual environment.
# Usage: scripts/bench-server.sh [ARTIFACT_DIR] [SECONDS_PER_LEVEL]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"
artifact="${1:-$DISTILLERY_CACHE/artifacts/local-reviews}"
seconds="${2:-10}"
[ -f "$artifact/distillery.json" ] || { echo "no artifact at $artifact: run the README's main job first" >&2; exit 1; }
venv="${DISTILLERY_BENCH_VENV:-$HOME/.cache/distillery-bench-venv}"
if ! "$venv/bin/python" -c 'import onnxruntime, fastapi, uvicorn, tokenizers, numpy' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'onnxruntime==1.31.1' 'fastapi==0.118.0' 'uvicorn==0.37.0' 'tokenizers==0.22.1' 'numpy==2.3.3'
fi
cargo build --release -q -p distillery-worker -p distillery-server
model="$(basename "$artifact")"
ours_port=18080; base_port=18081
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
RAYON_NUM_THREADS=1 target/release/distillery-server --model "$artifact" --port "$ours_port" --address 127.0.0.1 \
  --log-level warn ${DISTILLERY_SERVER_FLAGS:-} &
pids+=($!)
"$venv/bin/python" scripts/bench/baseline_server.py "$artifact" "$base_port" "${BASELINE_WORKERS:-1}" &
pids+=($!)
echo "bench: $(nproc) CPUs; artifact $artifact; $seconds s per level; distillery-server flags: ${DISTILLERY_SERVER_FLAGS:-(defaults)}; baseline: ${BASELINE_WORKERS:-1} uvicorn worker(s), ${BASELINE_HANDLER:-sync} handler"
out="${DISTILLERY_BENCH_OUT:-target/bench-server}"; mkdir -p "$out"
target/release/distillery-worker loadtest --model "$model" -a "$artifact" --duration-seconds "$seconds" \
  --target "distillery=http://127.0.0.1:$ours_port" --target "python=http://127.0.0.1:$base_port" \
  --json "$out/closed.json"
kill "${pids[1]}"   # the baseline; the overload run measures distillery-server alone
capacity=$(python3 -c "import json; print(max(r['throughput'] for r in json.load(open('$out/closed.json')) if r['target']=='distillery'))")
rate=$(python3 -c "print(round(2 * $capacity))")
echo "bench: overload — open loop at $rate req/s, twice the best closed-loop throughput ($capacity req/s)"
curl -s "http://127.0.0.1:$ours_port/metrics" > "$out/metrics.before"
target/release/distillery-worker loadtest --model "$model" -a "$artifact" --duration-seconds "$seconds" \
  --target "distillery=http://127.0.0.1:$ours_port" --rate "$rate" --connections 512 --json "$out/overload.json"
curl -s "http://127.0.0.1:$ours_port/metrics" > "$out/metrics.after"
# The server's own view of the overload run: its latency histogram (arrival to response, admitted
# requests only), before and after, so the load generator's lateness on a shared CPU is left out.
python3 - "$out/metrics.before" "$out/metrics.after" <<'PY'
import re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'distillery_server_request_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            out[float(m.group(1))] = float(m.group(2))
    return out
before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
total = delta[-1][1]
for q in (0.5, 0.99):
    le = next(le for le, n in delta if n >= q * total)
    print(f"server-side p{round(q * 100)} of the {int(total)} admitted requests: <= {le * 1e3:g} ms (histogram bucket bound)")
PY
grep -E '^distillery_server_(requests_total\{endpoint="infer"|batch_size_(sum|count))' "$out/metrics.after" || true
