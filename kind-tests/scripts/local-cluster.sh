#!/usr/bin/env bash
# A real Kubernetes control plane plus istiod, run as local processes on
# 127.0.0.1 (no containers): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok (fake nodes/kubelets) and istiod (CA + XDS).
#
# usage: local-cluster.sh up|down|env|status [STATE_DIR]
#        local-cluster.sh stop|start STATE_DIR COMPONENT
#   STATE_DIR defaults to ${MESHGATE_CLUSTER_DIR:-/tmp/meshgate-cluster}
#   stop/start take one component of a running cluster down and bring it back
#   with exactly the flags `up` used (outage tests); COMPONENT is one of
#   etcd kube-apiserver kube-controller-manager kube-scheduler kwok istiod.
#
#   APISERVER_PROFILING=true serves Go's pprof on the API server's
#   /debug/pprof (off by default; proxy/bench uses it to profile writes).
#
# Layout of STATE_DIR: kubeconfig (admin), pki/, logs/<component>.log,
# pids/<component>.pid, ports.env (ports used), istio-root-cert.pem, etcd/,
# istiod/ (istiod's working directory).
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CMD="${1:-}"
STATE="${2:-${MESHGATE_CLUSTER_DIR:-/tmp/meshgate-cluster}}"

# Fixed, documented ports (all bound to 127.0.0.1; each checked free on `up`).
ETCD_PORT="${MESHGATE_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${MESHGATE_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${MESHGATE_APISERVER_PORT:-16443}"
KCM_PORT="${MESHGATE_KCM_PORT:-10257}"
SCHEDULER_PORT="${MESHGATE_SCHEDULER_PORT:-10259}"
KWOK_PORT="${MESHGATE_KWOK_PORT:-10247}"
ISTIOD_XDS_PORT="${MESHGATE_ISTIOD_XDS_PORT:-15010}"       # plaintext XDS
ISTIOD_GRPC_PORT="${MESHGATE_ISTIOD_GRPC_PORT:-15012}"     # TLS: XDS + CA (CreateCertificate)
ISTIOD_MONITOR_PORT="${MESHGATE_ISTIOD_MONITOR_PORT:-15014}"
ISTIOD_WEBHOOK_PORT="${MESHGATE_ISTIOD_WEBHOOK_PORT:-15017}"
ISTIOD_HTTP_PORT="${MESHGATE_ISTIOD_HTTP_PORT:-15080}"     # /ready and /debug (istiod's :8080)
ISTIOD_CTRLZ_PORT="${MESHGATE_ISTIOD_CTRLZ_PORT:-15876}"   # ControlZ introspection (default 9876)

# Start order; `down` stops in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok istiod)
SERVICE_CIDR=10.96.0.0/16
POD_CIDR=10.244.0.1/24      # kwok hands out fake pod IPs; nothing ever routes to them
SA_ISSUER=https://kubernetes.default.svc.cluster.local
TIMEOUT="${MESHGATE_CLUSTER_TIMEOUT:-120}"
# Audiences the apiserver itself accepts, as in a real cluster: istio-ca is NOT
# one of them. TokenRequest still issues istio-ca tokens and istiod checks them
# with a TokenReview for audience istio-ca; adding istio-ca here would make
# istiod accept ordinary default-audience tokens too (unlike real clusters).
API_AUDIENCES="${MESHGATE_API_AUDIENCES:-$SA_ISSUER}"

# A cluster started with custom ports/audiences keeps them for env/down/status.
if [[ "$CMD" != up && -f "$STATE/ports.env" ]]; then
  # shellcheck source=/dev/null
  source "$STATE/ports.env"
fi

log() { echo "[local-cluster] $*" >&2; }
die() { echo "[local-cluster] ERROR: $*" >&2; exit 1; }

eval "$("$SCRIPTS/build-tools.sh" --print-env)"

kc() { "$KUBECTL" --kubeconfig "$STATE/kubeconfig" "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

all_ports() {
  echo "$ETCD_PORT $ETCD_PEER_PORT $APISERVER_PORT $KCM_PORT $SCHEDULER_PORT $KWOK_PORT" \
    "$ISTIOD_XDS_PORT $ISTIOD_GRPC_PORT $ISTIOD_MONITOR_PORT $ISTIOD_WEBHOOK_PORT $ISTIOD_HTTP_PORT $ISTIOD_CTRLZ_PORT"
}

pid_of() { [[ -f "$STATE/pids/$1.pid" ]] && cat "$STATE/pids/$1.pid"; }
alive() { local p; p="$(pid_of "$1")" && kill -0 "$p" 2>/dev/null; }

fail_component() { # fail_component <component> <message>: show its log and exit
  local f="$STATE/logs/$1.log"
  echo "[local-cluster] ERROR: $1: $2" >&2
  if [[ -f "$f" ]]; then
    echo "----- last 40 lines of $f -----" >&2
    tail -n 40 "$f" >&2
    echo "-----" >&2
  fi
  exit 1
}

# start <component> <cwd> <cmd...>: run detached in its own session/process
# group (setsid) so `down` can kill it with everything it spawned.
start() {
  local name="$1" cwd="$2"
  shift 2
  mkdir -p "$cwd"
  # Appended: a component restarted by `start` keeps its earlier log.
  (cd "$cwd" && exec setsid "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1) &
  echo $! >"$STATE/pids/$name.pid"
  log "$name started (pid $!)"
}

# wait_for <component> <what> <cmd...>: poll until cmd succeeds or TIMEOUT.
wait_for() {
  local name="$1" what="$2" deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$name" || fail_component "$name" "process exited while waiting for $what"
    ((SECONDS < deadline)) || fail_component "$name" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
  log "$name: $what"
}

# ---- PKI (openssl) ------------------------------------------------------------
gen_pki() {
  local d="$STATE/pki"
  mkdir -p "$d"
  # Cluster CA: signs the apiserver serving cert and client certs.
  openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
    -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=meshgate-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  issue() { # issue <name> <subject> <extfile contents>
    openssl req -new -nodes -newkey rsa:2048 -keyout "$d/$1.key" -out "$d/$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" >"$d/$1.ext"
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 3650 -sha256 -extfile "$d/$1.ext" -out "$d/$1.crt" 2>/dev/null
  }
  issue apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # O=system:masters => cluster-admin without any RBAC objects.
  issue admin "/O=system:masters/CN=kubernetes-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # Service-account token signing key pair (apiserver signs, KCM signs legacy tokens).
  # Front-proxy (aggregation layer) CA + client: kube-apiserver publishes this CA
  # in extension-apiserver-authentication; KCM/scheduler complain without it.
  openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
    -keyout "$d/front-proxy-ca.key" -out "$d/front-proxy-ca.crt" -subj "/CN=meshgate-front-proxy-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new -nodes -newkey rsa:2048 -keyout "$d/front-proxy-client.key" -out "$d/front-proxy-client.csr" \
    -subj "/CN=front-proxy-client" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' \
    >"$d/front-proxy-client.ext"
  openssl x509 -req -in "$d/front-proxy-client.csr" -CA "$d/front-proxy-ca.crt" -CAkey "$d/front-proxy-ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$d/front-proxy-client.ext" -out "$d/front-proxy-client.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  chmod 600 "$d"/*.key
}

write_kubeconfig() {
  local d="$STATE/pki"
  cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: meshgate-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 <"$d/admin.crt")
    client-key-data: $(base64 -w0 <"$d/admin.key")
contexts:
- name: meshgate-local
  context: {cluster: meshgate-local, user: admin}
current-context: meshgate-local
EOF
  chmod 600 "$STATE/kubeconfig"
}

# ---- components ---------------------------------------------------------------
start_etcd() {
  start etcd "$STATE" "$ETCD" --name meshgate --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "meshgate=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn # throwaway data: skip fsync, it dominates on CI disks
  wait_for etcd "healthy" bash -c "curl -fsS http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"
}

start_apiserver() {
  local d="$STATE/pki"
  # Based on controller-runtime envtest's defaults, plus what a real cluster
  # needs: SA token issuing (TokenRequest, audience istio-ca), RBAC, admission.
  # --endpoint-reconciler-type=none: the only address we have is 127.0.0.1,
  # which Endpoints validation rejects (loopback), so the `kubernetes` Service
  # has no endpoints; nothing here runs in a pod, so nothing needs them.
  start kube-apiserver "$STATE" "$KUBE_APISERVER" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --cert-dir="$STATE/pki/apiserver-generated" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" \
    --client-ca-file="$d/ca.crt" \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$d/sa.pub" \
    --service-account-signing-key-file="$d/sa.key" \
    --api-audiences="$API_AUDIENCES" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --profiling="${APISERVER_PROFILING:-false}" \
    --kubelet-preferred-address-types=InternalIP \
    --endpoint-reconciler-type=none \
    --requestheader-client-ca-file="$d/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$d/front-proxy-client.crt" --proxy-client-key-file="$d/front-proxy-client.key"
  wait_for kube-apiserver "ready (/readyz)" curl -fsS --cacert "$d/ca.crt" --cert "$d/admin.crt" --key "$d/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz"
}

start_controller_manager() {
  local d="$STATE/pki"
  # --flex-volume-plugin-dir: default is under /usr/libexec, which KCM would create.
  start kube-controller-manager "$STATE" "$KUBE_CONTROLLER_MANAGER" \
    --kubeconfig="$STATE/kubeconfig" \
    --authentication-kubeconfig="$STATE/kubeconfig" --authorization-kubeconfig="$STATE/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE/pki/kcm-generated" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$d/sa.key" \
    --root-ca-file="$d/ca.crt" \
    --cluster-signing-cert-file="$d/ca.crt" --cluster-signing-key-file="$d/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --flex-volume-plugin-dir="$STATE/flexvolume" \
    --controllers='*'
  wait_for kube-controller-manager "healthy (/healthz)" curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
}

start_scheduler() {
  start kube-scheduler "$STATE" "$KUBE_SCHEDULER" \
    --kubeconfig="$STATE/kubeconfig" \
    --authentication-kubeconfig="$STATE/kubeconfig" --authorization-kubeconfig="$STATE/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$STATE/pki/scheduler-generated" \
    --leader-elect=false
  wait_for kube-scheduler "healthy (/healthz)" curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz"
}

start_kwok() {
  # kwok plays kubelet for Nodes annotated kwok.x-k8s.io/node=fake: it keeps
  # them Ready (lease heartbeats) and moves their scheduled Pods to Running/Ready.
  # Node address 127.0.0.1 + node-port = kwok's own server, so anything the
  # apiserver sends to "the kubelet" (logs/exec) stays on loopback.
  : >"$STATE/kwok.yaml" # empty config: ignore any ~/.kwok/kwok.yaml
  start kwok "$STATE" "$KWOK" --config="$STATE/kwok.yaml" \
    --kubeconfig="$STATE/kubeconfig" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --server-address="127.0.0.1:$KWOK_PORT" \
    --node-ip=127.0.0.1 --node-port="$KWOK_PORT" \
    --cidr="$POD_CIDR"
  local n
  for n in kwok-node-0 kwok-node-1; do
    kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $n
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $n
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done
  wait_for kwok "fake nodes Ready" kc wait --for=condition=Ready node/kwok-node-0 node/kwok-node-1 --timeout=2s
}

start_istiod() {
  # Istio CRDs first: istiod watches them and refuses to be ready without them.
  kc apply --server-side --force-conflicts -f "$ISTIO_CRDS" >/dev/null
  kc wait --for=condition=Established crd --all --timeout=60s >/dev/null
  kc create namespace istio-system --dry-run=client -o yaml | kc apply -f - >/dev/null
  # cwd matters: istiod resolves ./etc/istio/config/mesh, ./etc/cacerts,
  # ./var/run/secrets/... relative to it, so give it a private directory.
  # Env: what the istiod Deployment normally gets from the downward API/chart.
  # KUBERNETES_SERVICE_HOST is unset, so istiod runs "out of cluster": it uses
  # --kubeconfig and checks workload tokens with TokenReview (aud istio-ca).
  # PILOT_CERT_PROVIDER=istiod: its own CA signs its serving cert (port 15012).
  # ISTIOD_CUSTOM_HOST adds SAN "localhost" next to istiod.istio-system.svc.
  # (JWT_POLICY is read by the sidecar agent only, so it is not set here.)
  # No injector/validation webhook configurations exist, so nothing is patched.
  start istiod "$STATE/istiod" env -u KUBERNETES_SERVICE_HOST \
    POD_NAMESPACE=istio-system POD_NAME=istiod-local REVISION=default \
    PILOT_CERT_PROVIDER=istiod CLUSTER_ID=Kubernetes TOKEN_AUDIENCES=istio-ca \
    ISTIOD_CUSTOM_HOST=localhost \
    "$ISTIOD" discovery \
    --kubeconfig="$STATE/kubeconfig" \
    --domain=cluster.local \
    --grpcAddr="127.0.0.1:$ISTIOD_XDS_PORT" \
    --secureGRPCAddr="127.0.0.1:$ISTIOD_GRPC_PORT" \
    --monitoringAddr="127.0.0.1:$ISTIOD_MONITOR_PORT" \
    --httpsAddr="127.0.0.1:$ISTIOD_WEBHOOK_PORT" \
    --httpAddr="127.0.0.1:$ISTIOD_HTTP_PORT" \
    --ctrlz_address=127.0.0.1 --ctrlz_port="$ISTIOD_CTRLZ_PORT" \
    --shutdownDuration=1s \
    --log_output_level=default:info
  wait_for istiod "ready (/ready)" curl -fsS "http://127.0.0.1:$ISTIOD_HTTP_PORT/ready"
  wait_for istiod "CA port $ISTIOD_GRPC_PORT open" port_open "$ISTIOD_GRPC_PORT"
  wait_for istiod "published istio-ca-root-cert in default" kc -n default get configmap istio-ca-root-cert
  kc -n default get configmap istio-ca-root-cert -o 'jsonpath={.data.root-cert\.pem}' >"$STATE/istio-root-cert.pem"
}

# ---- commands -----------------------------------------------------------------
print_env() {
  echo "export MESHGATE_CLUSTER_DIR=$STATE"
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export MESHGATE_APISERVER=https://127.0.0.1:$APISERVER_PORT"
  echo "export MESHGATE_ISTIOD_ADDR=127.0.0.1:$ISTIOD_GRPC_PORT"
  echo "export MESHGATE_ISTIOD_XDS_PLAINTEXT_ADDR=127.0.0.1:$ISTIOD_XDS_PORT"
  echo "export MESHGATE_ISTIOD_SAN=istiod.istio-system.svc"
  echo "export MESHGATE_ISTIO_ROOT_CERT=$STATE/istio-root-cert.pem"
  "$SCRIPTS/build-tools.sh" --print-env
}

cmd_down() {
  local c p i port stopped=0 pids=()
  # TERM every component's process group at once (newest first), give them
  # 10 s together to exit, then KILL whatever is left in those groups.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[i]}"
    p="$(pid_of "$c")" || continue
    stopped=1
    pids+=("$p")
    if kill -0 "$p" 2>/dev/null; then
      log "stopping $c (process group $p)"
      kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    fi
  done
  for _ in $(seq 1 40); do
    c=0
    for p in "${pids[@]}"; do if kill -0 "$p" 2>/dev/null; then c=1; fi; done
    ((c)) || break
    sleep 0.25
  done
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  rm -f "$STATE"/pids/*.pid
  # Only when we stopped something: the ports may belong to another cluster.
  if ((stopped)); then
    for port in $(all_ports); do
      for _ in $(seq 1 40); do port_open "$port" || break; sleep 0.25; done
      if port_open "$port"; then log "WARNING: port $port is still in use"; fi
    done
  fi
  if [[ -d "$STATE" ]]; then
    [[ -f "$STATE/kubeconfig" || -d "$STATE/pids" || -z "$(ls -A "$STATE")" ]] ||
      die "refusing to delete $STATE: does not look like a local-cluster state dir"
    rm -rf "$STATE"
  fi
  log "down"
}

cmd_up() {
  local c t0=$SECONDS port
  if [[ -d "$STATE/pids" ]]; then
    for c in "${COMPONENTS[@]}"; do
      alive "$c" || { log "stale/partial state in $STATE: cleaning up first"; cmd_down; break; }
    done
    if [[ -d "$STATE/pids" ]]; then
      log "already up ($STATE)"
      echo "export KUBECONFIG=$STATE/kubeconfig"
      return 0
    fi
  fi
  for port in $(all_ports); do
    port_open "$port" && die "port 127.0.0.1:$port is already in use (override with MESHGATE_*_PORT, see docs/testing.md)"
  done
  "$SCRIPTS/build-tools.sh" kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok istiod istio-crds
  command -v openssl >/dev/null || die "openssl is required"
  mkdir -p "$STATE/logs" "$STATE/pids"
  # Any failure from here on: tear down what was started, keep logs for a look.
  trap 'rc=$?; if ((rc != 0)); then log "up failed; logs kept in $STATE.failed-logs"; rm -rf "$STATE.failed-logs"; cp -r "$STATE/logs" "$STATE.failed-logs" 2>/dev/null || true; cmd_down >/dev/null 2>&1 || true; fi' EXIT
  declare -p ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT KWOK_PORT ISTIOD_XDS_PORT \
    ISTIOD_GRPC_PORT ISTIOD_MONITOR_PORT ISTIOD_WEBHOOK_PORT ISTIOD_HTTP_PORT ISTIOD_CTRLZ_PORT \
    API_AUDIENCES >"$STATE/ports.env"
  gen_pki
  write_kubeconfig
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  wait_for kube-controller-manager "default ServiceAccount created" kc -n default get serviceaccount default
  start_kwok
  start_istiod
  trap - EXIT
  log "up in $((SECONDS - t0))s; state in $STATE"
  echo "export KUBECONFIG=$STATE/kubeconfig"
}

# stop_one <component>: TERM its process group, KILL after 10 s, wait for its ports.
stop_one() {
  local c="$1" p port
  p="$(pid_of "$c")" || die "$c is not running (no $STATE/pids/$c.pid)"
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$p" 2>/dev/null || true
  rm -f "$STATE/pids/$c.pid"
  for port in $(ports_of "$c"); do
    for _ in $(seq 1 40); do port_open "$port" || break; sleep 0.25; done
  done
  log "$c stopped"
}

ports_of() {
  case "$1" in
    etcd) echo "$ETCD_PORT $ETCD_PEER_PORT" ;;
    kube-apiserver) echo "$APISERVER_PORT" ;;
    kube-controller-manager) echo "$KCM_PORT" ;;
    kube-scheduler) echo "$SCHEDULER_PORT" ;;
    kwok) echo "$KWOK_PORT" ;;
    istiod) echo "$ISTIOD_XDS_PORT $ISTIOD_GRPC_PORT $ISTIOD_MONITOR_PORT $ISTIOD_WEBHOOK_PORT $ISTIOD_HTTP_PORT $ISTIOD_CTRLZ_PORT" ;;
    *) die "unknown component '$1' (one of: ${COMPONENTS[*]})" ;;
  esac
}

# start_one <component>: the same start_<component> that `up` runs.
start_one() {
  local c="$1"
  ports_of "$c" >/dev/null
  [[ -f "$STATE/kubeconfig" ]] || die "no cluster in $STATE (run up first)"
  alive "$c" && die "$c is already running (pid $(pid_of "$c"))"
  case "$c" in
    etcd) start_etcd ;;
    kube-apiserver) start_apiserver ;;
    kube-controller-manager) start_controller_manager ;;
    kube-scheduler) start_scheduler ;;
    kwok) start_kwok ;;
    istiod) start_istiod ;;
  esac
}

cmd_status() {
  local c
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then echo "$c: running (pid $(pid_of "$c"))"; else echo "$c: not running"; fi
  done
}

case "$CMD" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) print_env ;;
  status) cmd_status ;;
  stop) [[ -n "${3:-}" ]] || die "usage: $0 stop STATE_DIR COMPONENT"; stop_one "$3" ;;
  start) [[ -n "${3:-}" ]] || die "usage: $0 start STATE_DIR COMPONENT"; start_one "$3" ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
