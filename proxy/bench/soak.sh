#!/usr/bin/env bash
# Soak: a standalone meshgate-proxy under a steady mixed load (HTTP/1.1, h2c,
# gRPC, WebSocket) with a manifest reload every RELOAD_EVERY seconds, sampling
# the proxy's RSS and open fds. Prints start/end/max and every error; exits 1 on
# any error. Run by hand (see docs/reliability.md for recorded runs):
#
#   proxy/bench/soak.sh                          # 30 min, 20 req/s per protocol
#   DURATION=300 RATE=10 proxy/bench/soak.sh     # a 5-minute run
#   PROFILE=release proxy/bench/soak.sh          # optimised build (default: debug)
#
# The driver is proxy/examples/soak.rs; everything runs on 127.0.0.1. On a
# shared machine run it as `nice -n 19 proxy/bench/soak.sh`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export DURATION="${DURATION:-1800}"
export RATE="${RATE:-20}"
export RELOAD_EVERY="${RELOAD_EVERY:-10}"
export SAMPLE_EVERY="${SAMPLE_EVERY:-30}"
PROFILE="${PROFILE:-debug}"

cd "$REPO"
flags=()
[[ "$PROFILE" == release ]] && flags+=(--release)
cargo build --locked -p meshgate-proxy --bin meshgate-proxy --example soak "${flags[@]}"
target="${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE"
export PROXY_BIN="$target/meshgate-proxy"
exec "$target/examples/soak"
