#!/usr/bin/env bash
# The whole meshgate test suite: unit and integration tests of every crate, then
# the conformance suite against a real control plane (etcd, kube-apiserver,
# controllers, kwok, istiod) that kind-tests/scripts/ build from Go modules and
# run on 127.0.0.1. This is the README's test command and what .ci/run calls.
#
# MESHGATE_USE_CLUSTER=1 runs the conformance suite against the cluster that
# KUBECONFIG already points at (a kind cluster, say) instead of starting one.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[run-tests] %s\n' "$*"; }

command -v cargo >/dev/null || { echo "run-tests: cargo not found; install Rust (rustup)" >&2; exit 1; }

# First: the proxy's global rate-limit tests run a real redis-server.
bash kind-tests/scripts/install-deps.sh

log "unit and integration tests"
cargo test --workspace --locked --exclude meshgate-kind-tests

if [[ "${MESHGATE_USE_CLUSTER:-0}" != 1 ]]; then
  log "building the control-plane binaries (cached under ~/.cache/meshgate)"
  bash kind-tests/scripts/build-tools.sh
  state="$(mktemp -d /tmp/meshgate-cluster.XXXXXX)"
  trap 'bash kind-tests/scripts/local-cluster.sh down "$state" || true' EXIT
  log "starting the local control plane in $state"
  bash kind-tests/scripts/local-cluster.sh up "$state"
  eval "$(bash kind-tests/scripts/local-cluster.sh env "$state")"
fi
# shellcheck source=scripts/tools.env.sh
source kind-tests/scripts/tools.env.sh

log "conformance suite against $KUBECONFIG"
cargo test --locked -p meshgate-kind-tests
