#!/usr/bin/env bash
# Self-check for local-cluster.sh: up, exercise what meshgate's tests rely on
# (scheduling + kwok readiness, TokenRequest with audience istio-ca, istiod's
# root cert distribution and its TLS CA port), then down. Exits non-zero on
# any failure; the cluster is always torn down.
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${1:-${MESHGATE_CLUSTER_DIR:-/tmp/meshgate-smoke}}"
NS=meshgate-smoke

log() { echo "[smoke] $*" >&2; }
fail() { echo "[smoke] FAIL: $*" >&2; exit 1; }

trap '"$SCRIPTS/local-cluster.sh" down "$STATE" >/dev/null 2>&1 || true' EXIT
t0=$SECONDS
"$SCRIPTS/local-cluster.sh" up "$STATE"
eval "$("$SCRIPTS/local-cluster.sh" env "$STATE")"
k() { "$KUBECTL" "$@"; }

log "server version: $(k version -o json | jq -r .serverVersion.gitVersion)"
k create namespace "$NS"

# 1. A Deployment gets scheduled onto a kwok node and its pod becomes Ready.
k -n "$NS" create deployment echo --image=example.invalid/echo:1 --replicas=1
k -n "$NS" rollout status deployment/echo --timeout=90s || fail "deployment never became available"
k -n "$NS" wait --for=condition=Ready pod -l app=echo --timeout=30s || fail "pod not Ready"
log "pod: $(k -n "$NS" get pod -l app=echo -o jsonpath='{.items[0].metadata.name} on {.items[0].spec.nodeName} ip={.items[0].status.podIP}')"

# 2. ServiceAccount token for audience istio-ca (what a workload sends to istiod's CA).
k -n "$NS" create serviceaccount workload
token="$(k -n "$NS" create token workload --audience istio-ca --duration 10m)"
[[ -n "$token" ]] || fail "empty token"
payload="$(cut -d. -f2 <<<"$token" | tr '_-' '/+')" # JWT payload is unpadded base64url
while ((${#payload} % 4)); do payload+="="; done
aud="$(base64 -d <<<"$payload" | jq -c .aud)"
[[ "$aud" == '["istio-ca"]' ]] || fail "token audience is $aud, want [\"istio-ca\"]"
log "token audience: $aud"

# 3. istiod publishes its root cert into (new) namespaces; kube-root-ca.crt from KCM too.
for _ in $(seq 1 60); do k -n "$NS" get configmap istio-ca-root-cert >/dev/null 2>&1 && break; sleep 1; done
k -n "$NS" get configmap istio-ca-root-cert -o 'jsonpath={.data.root-cert\.pem}' >"$STATE/smoke-root.pem" ||
  fail "istio-ca-root-cert not published in $NS"
k -n "$NS" get configmap kube-root-ca.crt >/dev/null || fail "kube-root-ca.crt not published in $NS"
openssl x509 -in "$STATE/smoke-root.pem" -noout -subject >&2

# 4. istiod's TLS port (XDS + CA) presents a chain to that root with the istiod SAN.
out="$(openssl s_client -connect "$MESHGATE_ISTIOD_ADDR" -servername "$MESHGATE_ISTIOD_SAN" \
  -verify_hostname "$MESHGATE_ISTIOD_SAN" -CAfile "$STATE/smoke-root.pem" -verify_return_error -brief \
  </dev/null 2>&1)" || fail "TLS to istiod $MESHGATE_ISTIOD_ADDR did not verify: $out"
grep -q 'Verification: OK' <<<"$out" || fail "istiod TLS verification not OK: $out"
log "istiod TLS at $MESHGATE_ISTIOD_ADDR verifies against istio-ca-root-cert"

k delete namespace "$NS" --wait=false >/dev/null
log "PASS in $((SECONDS - t0))s"
