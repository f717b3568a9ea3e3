#!/usr/bin/env bash
# Side-by-side benchmark: meshgate-proxy vs nginx vs HAProxy in the same role
# (TLS termination on 127.0.0.1, keep-alive pool to an upstream that requires
# Istio-style mesh mTLS, the proxy presenting a SPIFFE workload certificate).
#
#   proxy/bench/compare.sh                      # everything, REPEAT=3 DURATION=10
#   REPEAT=1 DURATION=3 SCENARIOS="1 3" proxy/bench/compare.sh   # a smoke run
#
# See docs/performance.md for the method and every knob. Only 127.0.0.1 is used.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

export REPEAT="${REPEAT:-3}"
export DURATION="${DURATION:-10}"
export SCENARIOS="${SCENARIOS:-1 2 3 4 6 7 8 9 10}"
export PEERS="${PEERS:-nginx haproxy}"
export CONNS="${CONNS:-50}"
export IDLE_CONNS="${IDLE_CONNS:-10000}"
export MANY_ROUTES="${MANY_ROUTES:-10000}"
export PROP_ROUTES="${PROP_ROUTES:-5000}"
export PROP_CHANGES="${PROP_CHANGES:-20}"       # scenario 10: changes per run (p50/p99)
export WITH_POLICY="${WITH_POLICY:-0}"          # 1: add scenario 5 (JWT + rate limit)
export S2_CLIENTS="${S2_CLIENTS:-16}"
export RELOAD_INTERVAL_MS="${RELOAD_INTERVAL_MS:-100}"
export PROXY_CPU="${PROXY_CPU:-0}"              # the core every proxy is pinned to
export LOAD_CPU="${LOAD_CPU:-1}"                # load generator and upstream
export OHA_VERSION="${OHA_VERSION:-1.16.0}"
export MESHGATE_BENCH_OUT="${MESHGATE_BENCH_OUT:-$HERE/results}"
CACHE="${MESHGATE_BENCH_CACHE:-$HOME/.cache/meshgate}"

if [[ "$WITH_POLICY" == 1 && " $SCENARIOS " != *" 5 "* ]]; then
    export SCENARIOS="$SCENARIOS 5"
fi

log() { printf '[compare] %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
command -v taskset >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
    log "installing from Debian: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts the packaged services where it can: the benchmark runs its own.
for svc in nginx haproxy; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        log "stopping the system $svc service (it would share the machine)"
        systemctl stop "$svc" || true
    fi
done

# oha (open-loop load with coordinated-omission correction; wrk2 is not in
# Debian): built from crates.io once, version pinned, cached.
OHA="$CACHE/bin/oha"
if [[ ! -x "$OHA" ]] || ! "$OHA" --version 2>/dev/null | grep -q "$OHA_VERSION"; then
    log "building oha $OHA_VERSION from crates.io into $CACHE/bin (once)"
    cargo install oha --version "$OHA_VERSION" --locked --root "$CACHE" \
        --target-dir "$CACHE/oha-target" >&2 || log "oha could not be built: scenario 8 will be skipped"
fi
export OHA

# meshgate-proxy, release build.
if [[ -z "${MESHGATE_BIN:-}" ]]; then
    log "building meshgate-proxy (release)"
    (cd "$REPO" && cargo build --release -q -p meshgate-proxy)
    MESHGATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/meshgate-proxy"
fi
[[ -x "$MESHGATE_BIN" ]] || { log "no meshgate-proxy binary at $MESHGATE_BIN"; exit 1; }
export MESHGATE_BIN

# The floor (peer `bare`): hyper + rustls alone, proxy/examples/bare_proxy.rs.
if [[ " $PEERS " == *" bare "* && -z "${BARE_BIN:-}" ]]; then
    log "building the bare hyper + rustls proxy (release)"
    (cd "$REPO" && cargo build --release -q -p meshgate-proxy --example bare_proxy)
    BARE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/examples/bare_proxy"
fi
export BARE_BIN="${BARE_BIN:-}"

# --- work dir, limits, cleanup -------------------------------------------------
WORK="$(mktemp -d /tmp/meshgate-bench.XXXXXX)"
chmod 0755 "$WORK"   # nginx workers (www-data) read the gRPC reply file
export WORK
mkdir -p "$WORK/pids" "$MESHGATE_BENCH_OUT"
cleanup() {
    local rc=$?
    for f in "$WORK"/pids/*.pid; do
        [[ -e "$f" ]] || continue
        pid="$(cat "$f")"
        # Each process was started in its own session: end its whole group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for f in "$WORK"/pids/*.pid; do
        [[ -e "$f" ]] || continue
        pid="$(cat "$f")"
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_WORK:-0}" != 1 ]]; then rm -rf "$WORK"; else log "work dir kept: $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "open files limit: $(ulimit -n)"

# --- certificates (ECDSA P-256) ------------------------------------------------
C="$WORK/certs"
mkdir -p "$C"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # name subject
    key "$C/$1.key"
    openssl req -x509 -new -key "$C/$1.key" -out "$C/$1.crt" -days 30 -subj "$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" 2>/dev/null
}
leaf() { # name ca subject san eku
    key "$C/$1.key"
    openssl req -new -key "$C/$1.key" -out "$C/$1.csr" -subj "$3" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\nauthorityKeyIdentifier=keyid\n' "$5" "$4" >"$C/$1.ext"
    openssl x509 -req -in "$C/$1.csr" -CA "$C/$2.crt" -CAkey "$C/$2.key" -CAcreateserial \
        -days 30 -extfile "$C/$1.ext" -out "$C/$1.crt" 2>/dev/null
}
ca edge-ca "/CN=meshgate bench edge CA"
leaf edge edge-ca "/CN=bench.local" "DNS:bench.local,DNS:localhost,IP:127.0.0.1" serverAuth
ca mesh-ca "/O=cluster.local/CN=meshgate bench mesh CA"
export GATEWAY_ID="spiffe://cluster.local/ns/bench/sa/bench-gateway"
export UPSTREAM_ID="spiffe://cluster.local/ns/bench/sa/upstream"
export UPSTREAM_DNS="upstream.bench.svc.cluster.local"
leaf gateway mesh-ca "/O=cluster.local" "URI:$GATEWAY_ID" "serverAuth,clientAuth"
leaf upstream mesh-ca "/O=cluster.local" "URI:$UPSTREAM_ID,DNS:$UPSTREAM_DNS" "serverAuth,clientAuth"
cat "$C/edge.crt" "$C/edge.key" >"$C/edge.pem"                 # haproxy wants one file
cat "$C/gateway.crt" "$C/gateway.key" >"$C/gateway.pem"
# Istio's OUTPUT_CERTS layout for meshgate-proxy --mesh-cert-dir.
mkdir -p "$C/mesh"
cp "$C/gateway.crt" "$C/mesh/cert-chain.pem"
cp "$C/gateway.key" "$C/mesh/key.pem"
cp "$C/mesh-ca.crt" "$C/mesh/root-cert.pem"
openssl verify -CAfile "$C/mesh-ca.crt" "$C/upstream.crt" "$C/gateway.crt" >/dev/null
openssl verify -CAfile "$C/edge-ca.crt" "$C/edge.crt" >/dev/null

log "work dir $WORK; results in $MESHGATE_BENCH_OUT"
# Not exec: the EXIT trap must run after the runner.
python3 "$HERE/bench.py"
