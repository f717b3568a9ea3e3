#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: comparable between two
# builds on a noisy machine, where wall-clock throughput is not (see
# docs/performance.md, "An HTTP/1.1 upstream pool of our own").
#
#   KEEP_WORK=1 PEERS=" " SCENARIOS=1 REPEAT=1 DURATION=1 proxy/bench/compare.sh
#       # once: leaves the certificates, manifests and upstream config in /tmp/meshgate-bench.*
#   proxy/bench/instructions.sh /tmp/meshgate-bench.XXXXXX BINARY [h1|h2] [WALL=1]
#
# Starts the work dir's mTLS upstream (nginx) and BINARY on it under callgrind, warms
# them with 4,000 requests (upstream connections, the first handshake's entropy
# seeding), zeroes the counters, then sends 20,000 requests over new TLS connections:
# h1 = HTTP/1.1, 50 connections (scenario 1); h2 = HTTP/2, 10 connections x 10
# streams (scenario 3). Prints the instructions of that second part; it includes the
# 50 (h1) or 10 (h2) edge TLS handshakes, the same for every build. With WALL=1 it
# runs the binary without callgrind and prints h2load's rate for 100,000 requests
# instead (wall clock: alternate the builds and repeat).
set -euo pipefail

WORK="${1:?work dir of compare.sh KEEP_WORK=1}"
BIN="${2:?meshgate-proxy binary}"
MODE="${3:-h1}"
EDGE="https://localhost:18443/"   # bench.py's EDGE_PORT
ADMIN="127.0.0.1:15900"           # bench.py's ADMIN
OUT="$(mktemp -d /tmp/meshgate-instructions.XXXXXX)"

for tool in nginx h2load valgrind callgrind_control curl taskset; do
    command -v "$tool" >/dev/null || { echo "needs $tool (compare.sh installs most; valgrind: apt-get install valgrind)" >&2; exit 1; }
done
case "$MODE" in
    h1) LOAD=(--h1 -c50 -m1) ;;
    h2) LOAD=(-c10 -m10) ;;
    *) echo "mode is h1 or h2" >&2; exit 1 ;;
esac

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

mkdir -p "$WORK/upstream/tmp"
taskset -c 1 nginx -c "$WORK/upstream/nginx.conf" -e "$OUT/upstream-error.log" &
pids+=($!)
wrap=(valgrind --tool=callgrind "--callgrind-out-file=$OUT/callgrind.out")
[[ "${WALL:-0}" == 1 ]] && wrap=()
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 0 "${wrap[@]}" "$BIN" \
    --manifests "$WORK/meshgate" --admin "$ADMIN" --bind-ip 127.0.0.1 \
    --mesh-cert-dir "$WORK/certs/mesh" >"$OUT/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
for _ in $(seq 1 1200); do
    curl -fs -o /dev/null "http://$ADMIN/ready" && break
    sleep 0.1
done
curl -fs -o /dev/null "http://$ADMIN/ready" || { echo "proxy not ready, see $OUT/proxy.log" >&2; exit 1; }

if [[ "${WALL:-0}" == 1 ]]; then
    taskset -c 1 h2load -t1 "${LOAD[@]}" -n 4000 "$EDGE" >/dev/null
    taskset -c 1 h2load -t1 "${LOAD[@]}" -n 100000 "$EDGE" | grep -E "^finished in"
    exit 0
fi
taskset -c 1 h2load -t1 "${LOAD[@]}" -n 4000 "$EDGE" | grep -E "^requests:"
callgrind_control -z "$proxy" >/dev/null
taskset -c 1 h2load -t1 "${LOAD[@]}" -n 20000 "$EDGE" | grep -E "^requests:"
callgrind_control -d "$proxy" >/dev/null
dump="$(ls "$OUT"/callgrind.out.* | head -1)"
total="$(grep -E '^summary:' "$dump" | awk '{print $2}')"
echo "instructions for 20,000 requests: $total ($((total / 20000)) per request, handshakes included); profile: $dump"
