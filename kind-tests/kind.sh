#!/usr/bin/env bash
# Runs the conformance suite on a real kind cluster with Istio, real pods and
# real sidecars: for users' CI and developer machines that have a container
# engine. NOT run on the meshgate development machines (they have no container
# engine); there the suite runs against kind-tests/scripts/local-cluster.sh.
#
# usage: kind-tests/kind.sh [up|test|down]   (default: up then test)
# needs: docker (or podman as docker), kind, kubectl, helm; network access to
#        the Istio Helm repository and the container registries.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${MESHGATE_KIND_CLUSTER:-meshgate}"
ISTIO_VERSION="${MESHGATE_KIND_ISTIO_VERSION:-1.31.1}"   # keep in step with scripts/build-tools.sh
TAG=dev

log() { printf '[kind] %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "kind.sh: '$1' is required" >&2; exit 1; }; }

up() {
  for t in docker kind kubectl helm; do need "$t"; done
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
  kubectl config use-context "kind-$CLUSTER"

  log "installing Istio $ISTIO_VERSION (base + istiod) with Helm"
  helm repo add istio https://istio-release.storage.googleapis.com/charts >/dev/null 2>&1 || true
  helm repo update istio >/dev/null
  helm upgrade --install istio-base istio/base -n istio-system --create-namespace \
    --version "$ISTIO_VERSION" --wait
  helm upgrade --install istiod istio/istiod -n istio-system --version "$ISTIO_VERSION" --wait

  log "building and loading the images"
  docker build -f operator/Containerfile -t "meshgate-operator:$TAG" .
  docker build -f proxy/Containerfile -t "meshgate-proxy:$TAG" .
  kind load docker-image --name "$CLUSTER" "meshgate-operator:$TAG" "meshgate-proxy:$TAG"

  log "installing the meshgate chart"
  helm upgrade --install meshgate helm/meshgate -n meshgate-system --create-namespace \
    --set image.repository=meshgate-operator --set image.tag="$TAG" \
    --set image.pullPolicy=Never \
    --set proxyImage.repository=meshgate-proxy --set proxyImage.tag="$TAG" --wait
}

test_suite() {
  need kubectl; need helm
  # The suite reaches istiod's CA from this machine through a port-forward.
  kubectl -n istio-system port-forward svc/istiod 15012:15012 >/dev/null 2>&1 &
  pf=$!
  trap 'kill $pf 2>/dev/null || true' EXIT
  sleep 2
  export KUBECTL="$(command -v kubectl)" HELM="$(command -v helm)"
  export MESHGATE_ISTIOD_ADDR=127.0.0.1:15012 MESHGATE_K8S_VERSION="$(kubectl version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1)"
  log "conformance suite against kind-$CLUSTER"
  cargo test --locked -p meshgate-kind-tests
}

case "${1:-all}" in
  up) up ;;
  test) test_suite ;;
  down) kind delete cluster --name "$CLUSTER" ;;
  all) up; test_suite ;;
  *) echo "usage: $0 [up|test|down]" >&2; exit 2 ;;
esac
