#!/usr/bin/env bash
# Builds the real control-plane binaries used by local-cluster.sh from Go
# modules (no prebuilt downloads, no sources vendored into the repo) and caches
# them as $MESHGATE_CACHE/bin/<name>-<version>.  Already cached binaries are
# skipped, so a second run takes seconds.
#
# usage: build-tools.sh [name...]      build the named tools (default: all)
#        build-tools.sh --print-env    print `export VAR=path` lines (see tools.env.sh)
#        build-tools.sh --list         print name and cached path of every tool
#
# names: kube-apiserver kube-controller-manager kube-scheduler kubectl
#        etcd kwok istiod istio-crds gateway-api-crds prometheus-operator-crds helm jaeger
set -euo pipefail
shopt -s inherit_errexit

# ---- pinned versions: the only place to bump them -------------------------
K8S_VERSION=v1.35.4   # k8s.io/kubernetes; staging modules are v0.${minor}.${patch}
ETCD_VERSION=v3.6.16  # go.etcd.io/etcd/server/v3 (its root package is `main`)
KWOK_VERSION=v0.7.0   # sigs.k8s.io/kwok/cmd/kwok
# istio.io/istio: the module proxy reachable here stopped serving the 1.31.1 tag
# (403) in December 2026; it serves this release-1.31 commit of 2026-08-27 (just
# before 1.31.0), fetched by its pseudo-version. ISTIO_VERSION names the build.
ISTIO_VERSION=1.31-eed52ebb66ad
ISTIO_MODULE_VERSION=v0.0.0-20260827124520-eed52ebb66ad
GATEWAY_API_VERSION=v1.6.0 # sigs.k8s.io/gateway-api (the version istio $ISTIO_VERSION pins): its ReferenceGrant CRD
HELM_VERSION=v3.22.0  # helm.sh/helm/v3/cmd/helm
PROMETHEUS_OPERATOR_VERSION=v0.85.0 # github.com/prometheus-operator/prometheus-operator: PodMonitor/ServiceMonitor/PrometheusRule CRDs
JAEGER_VERSION=v1.76.0 # github.com/jaegertracing/jaeger/cmd/jaeger (Jaeger v2: an OTel collector with OTLP in, memory storage, query API)
# Pseudo-versions that istio $ISTIO_VERSION pins but the module proxy reachable
# here does not serve; each is swapped for the nearest newer available version
# (a `replace` in the wrapper), and only when the pinned one cannot be fetched.
# istio.io/api and istio.io/client-go need no entry: tags of the very same
# commit are found automatically (see istio_replaces).
ISTIO_DEP_FALLBACKS=(
  istio.io/api@v1.31.0        # pins v1.31.0-rc.0.0.20260824154656-b943409680a7
  istio.io/client-go@v1.31.0  # pins v1.31.0-rc.0.0.20260824155257-512e1cfc6c15
  github.com/envoyproxy/go-control-plane/envoy@v1.38.0                                 # pins v1.37.1-0.20260713214202-ca8ce173c36f
  github.com/envoyproxy/go-control-plane/contrib@v1.36.1-0.20260729145720-a2d8c7492908 # pins v1.36.1-0.20260713214202-ca8ce173c36f
)
# ---------------------------------------------------------------------------

CACHE_ROOT="${MESHGATE_CACHE:-$HOME/.cache/meshgate}"
BIN_DIR="$CACHE_ROOT/bin"
SRC_DIR="$CACHE_ROOT/src"   # wrapper modules (go.mod/go.sum) live here, never in the repo

K8S_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ALL_TOOLS=("${K8S_TOOLS[@]}" etcd kwok istiod istio-crds gateway-api-crds prometheus-operator-crds helm jaeger)

tool_version() {
  case "$1" in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl) echo "$K8S_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    istiod | istio-crds) echo "$ISTIO_VERSION" ;;
    gateway-api-crds) echo "$GATEWAY_API_VERSION" ;;
    prometheus-operator-crds) echo "$PROMETHEUS_OPERATOR_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    jaeger) echo "$JAEGER_VERSION" ;;
    *) return 1 ;;
  esac
}

tool_path() {
  local v
  v="$(tool_version "$1")" || { echo "build-tools: unknown tool '$1'" >&2; return 1; }
  case "$1" in
    istio-crds | gateway-api-crds | prometheus-operator-crds) echo "$BIN_DIR/$1-$v.yaml" ;;
    *) echo "$BIN_DIR/$1-$v" ;;
  esac
}

log() { echo "[build-tools] $*" >&2; }
die() { echo "[build-tools] ERROR: $*" >&2; exit 1; }

print_env() {
  # Variable names consumed by local-cluster.sh and the Rust integration tests.
  local pair var name
  for pair in KUBE_APISERVER:kube-apiserver KUBE_CONTROLLER_MANAGER:kube-controller-manager \
    KUBE_SCHEDULER:kube-scheduler KUBECTL:kubectl ETCD:etcd KWOK:kwok ISTIOD:istiod \
    ISTIO_CRDS:istio-crds GATEWAY_API_CRDS:gateway-api-crds PROMETHEUS_OPERATOR_CRDS:prometheus-operator-crds HELM:helm JAEGER:jaeger; do
    var="${pair%%:*}" name="${pair#*:}"
    printf 'export %s=%q\n' "$var" "$(tool_path "$name")"
  done
  printf 'export MESHGATE_K8S_VERSION=%q MESHGATE_ISTIO_VERSION=%q\n' "$K8S_VERSION" "$ISTIO_VERSION"
}

case "${1:-}" in
  --print-env) print_env; exit 0 ;;
  --list) for t in "${ALL_TOOLS[@]}"; do p="$(tool_path "$t")"; printf '%-24s %s%s\n' "$t" "$p" "$([[ -e $p ]] || echo ' (missing)')"; done; exit 0 ;;
  -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
esac

# ---- Go toolchain setup (only when something has to be built) ---------------
setup_go() {
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null 2>&1 || die "'go' not found in PATH (install Go >= 1.26, e.g. /usr/local/go/bin)"
  command -v jq >/dev/null 2>&1 || die "'jq' is required (apt-get install -y jq)"
  # -mod=mod: wrapper go.mod/go.sum are filled in on demand.
  # GOTOOLCHAIN=local: never download a different Go toolchain.
  export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0
  GO_BUILD=(go build -p "${MESHGATE_BUILD_JOBS:-2}" -trimpath)
  log "using $(go version) (GOPROXY=$(go env GOPROXY), build cache $(go env GOCACHE))"
  TMP_OUT="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
  trap 'rm -rf "$TMP_OUT"' EXIT
}

TOTAL_START=$SECONDS

# Fetch a module into the module cache and print `go mod download -json`.
# This is also our reachability check for the module proxy.
fetch_module() {
  local mod="$1" ver="$2" out
  if ! out="$(cd "$SRC_DIR" && timeout 300 go mod download -json "$mod@$ver" 2>&1)" ||
    ! jq -e '.Error == null' <<<"$out" >/dev/null 2>&1; then
    die "cannot fetch $mod@$ver (GOPROXY=$(go env GOPROXY)); is the Go module proxy reachable?
$out"
  fi
  echo "$out"
}

# Write a wrapper module: go.mod requiring $mod@$ver plus any extra lines.
# go/godebug lines are copied from the upstream go.mod so runtime defaults match.
write_wrapper() {
  local dir="$1" gomod_path="$2" mod="$3" ver="$4" extra="${5:-}"
  mkdir -p "$dir"
  {
    echo "// Generated by meshgate kind-tests/scripts/build-tools.sh; safe to delete."
    echo "module meshgate.local/tools/$(basename "$dir")"
    echo
    grep -E '^(go|godebug) ' "$gomod_path" || echo "go 1.25.0"
    echo
    echo "require $mod $ver"
    [[ -n "$extra" ]] && printf '\n%s\n' "$extra"
  } >"$dir/go.mod.new"
  # Keep go.sum (and go.mod when unchanged) so warm runs do not re-resolve.
  if ! cmp -s "$dir/go.mod.new" "$dir/go.mod.gen" 2>/dev/null; then
    cp "$dir/go.mod.new" "$dir/go.mod"
    cp "$dir/go.mod.new" "$dir/go.mod.gen"
  fi
  rm -f "$dir/go.mod.new"
}

# go_build <label> <wrapper dir> <ldflags> <pkg...>: resolve+download, then
# compile all packages in one `go build` (shared packages compile once).
go_build() {
  local label="$1" dir="$2" ldflags="$3" t
  shift 3
  t=$SECONDS
  log "$label: resolving + downloading modules..."
  if ! (cd "$dir" && go list -deps "$@" >/dev/null 2>"$TMP_OUT/resolve.log"); then
    echo "[build-tools] modules that could not be fetched:" >&2
    grep -v '^go: downloading' "$TMP_OUT/resolve.log" | grep -oE '[^ :]+@v[0-9][^ :]*: (reading|verifying)' | sed 's/: .*//' | sort -u | sed 's/^/    /' >&2 || true
    grep -v '^go: downloading' "$TMP_OUT/resolve.log" | tail -n 6 >&2
    die "$label: module resolution failed (GOPROXY=$(go env GOPROXY))"
  fi
  log "$label: modules ready in $((SECONDS - t))s ($(grep -c '^go: downloading' "$TMP_OUT/resolve.log" || true) downloaded)"
  t=$SECONDS
  log "$label: compiling..."
  rm -rf "${TMP_OUT:?}"/*
  (cd "$dir" && "${GO_BUILD[@]}" -ldflags "-s -w $ldflags" -o "$TMP_OUT/" "$@") || die "$label: go build failed (see above)"
  log "$label: compiled in $((SECONDS - t))s"
}

# install_bin <built name> <tool name>: atomically move into the cache.
install_bin() {
  local dest
  dest="$(tool_path "$2")"
  mv -f "$TMP_OUT/$1" "$dest"
  log "  -> $dest"
}

origin_hash() { jq -r '.Origin.Hash // "unknown"' <<<"$1"; }
module_time() { jq -r '.Info' <<<"$1" | xargs jq -r '.Time // "1970-01-01T00:00:00Z"' 2>/dev/null || echo 1970-01-01T00:00:00Z; }

build_k8s() {
  local -a want=("$@") pkgs=()
  local json gomod dir minor patch staging_ver replaces ld commit date t
  json="$(fetch_module k8s.io/kubernetes "$K8S_VERSION")"
  gomod="$(jq -r .GoMod <<<"$json")"
  # k8s.io/kubernetes requires its staging repos as v0.0.0 and replaces them
  # with ./staging/...; replaces of dependencies are ignored, so the wrapper
  # maps every such module to its published v0.<minor>.<patch> tag.
  minor="$(cut -d. -f2 <<<"$K8S_VERSION")" patch="$(cut -d. -f3 <<<"$K8S_VERSION")"
  staging_ver="v0.$minor.$patch"
  replaces="$(awk -v v="$staging_ver" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "replace %s v0.0.0 => %s %s\n", $1, $1, v }' "$gomod")"
  [[ -n "$replaces" ]] || die "found no staging replace lines in $gomod"
  dir="$SRC_DIR/k8s-$K8S_VERSION"
  write_wrapper "$dir" "$gomod" k8s.io/kubernetes "$K8S_VERSION" "$replaces"
  commit="$(origin_hash "$json")" date="$(module_time "$json")"
  ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit=$commit -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  for t in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$t"); done
  go_build "kubernetes $K8S_VERSION (${want[*]})" "$dir" "$ld" "${pkgs[@]}"
  for t in "${want[@]}"; do install_bin "$t" "$t"; done
}

build_etcd() {
  local json gomod dir
  json="$(fetch_module go.etcd.io/etcd/server/v3 "$ETCD_VERSION")"
  gomod="$(jq -r .GoMod <<<"$json")"
  dir="$SRC_DIR/etcd-$ETCD_VERSION"
  write_wrapper "$dir" "$gomod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  go_build "etcd $ETCD_VERSION" "$dir" "-X go.etcd.io/etcd/api/v3/version.GitSHA=$(origin_hash "$json" | cut -c1-10)" \
    go.etcd.io/etcd/server/v3
  # go build names a binary for a path ending in /vN after the element before it.
  if [[ -e "$TMP_OUT/server" ]]; then install_bin server etcd; else install_bin v3 etcd; fi
}

build_kwok() {
  local json gomod dir
  json="$(fetch_module sigs.k8s.io/kwok "$KWOK_VERSION")"
  gomod="$(jq -r .GoMod <<<"$json")"
  dir="$SRC_DIR/kwok-$KWOK_VERSION"
  write_wrapper "$dir" "$gomod" sigs.k8s.io/kwok "$KWOK_VERSION"
  go_build "kwok $KWOK_VERSION" "$dir" "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" sigs.k8s.io/kwok/cmd/kwok
  install_bin kwok kwok
}

# istio's go.mod pins some dependencies as pseudo-versions that a module proxy
# or mirror may not serve.  For each such module that cannot be fetched:
#  - vX.Y.Z-0.<time>-<commit> whose tag vX.Y.Z is that very commit (istio.io/api,
#    istio.io/client-go at release time): replace with the tag, identical content;
#  - a module listed in ISTIO_DEP_FALLBACKS: replace with the version given there.
# Prints `replace` lines; on a complete proxy (proxy.golang.org) it prints none.
istio_replaces() {
  local gomod="$1" mod ver base hash tag_json fb
  while read -r mod ver; do
    [[ "$ver" =~ [0-9]{14}-[0-9a-f]{12}$ ]] || continue # pseudo-versions only
    (cd "$SRC_DIR" && timeout 300 go mod download "$mod@$ver" >/dev/null 2>&1) && continue
    for fb in "${ISTIO_DEP_FALLBACKS[@]}"; do
      if [[ "${fb%@*}" == "$mod" ]]; then
        fetch_module "$mod" "${fb#*@}" >/dev/null
        log "istiod: $mod@$ver unavailable; using ${fb#*@} (ISTIO_DEP_FALLBACKS)"
        echo "replace $mod $ver => $mod ${fb#*@}"
        continue 2
      fi
    done
    if [[ "$ver" =~ ^(v[0-9]+\.[0-9]+\.[0-9]+)-0\.[0-9]{14}-([0-9a-f]{12})$ ]]; then
      base="${BASH_REMATCH[1]}" hash="${BASH_REMATCH[2]}"
      if tag_json="$(cd "$SRC_DIR" && timeout 300 go mod download -json "$mod@$base" 2>/dev/null)" &&
        [[ "$(origin_hash "$tag_json")" == "$hash"* ]]; then
        log "istiod: $mod@$ver unavailable; using $base (same commit $hash)"
        echo "replace $mod $ver => $mod $base"
        continue
      fi
    fi
    # Not fatal here: most pinned modules are never needed by pilot-discovery;
    # go list will name the ones that are.
  done < <(awk '$1 == "require" && $2 != "(" { print $2, $3 } /^require \($/ { r = 1; next } r && /^\)/ { r = 0 } r && NF >= 2 { print $1, $2 }' "$gomod")
}

build_istio() {
  local -a want=("$@")
  local json gomod dir src commit p replaces
  json="$(fetch_module istio.io/istio "$ISTIO_MODULE_VERSION")"
  gomod="$(jq -r .GoMod <<<"$json")" src="$(jq -r .Dir <<<"$json")"
  commit="$(origin_hash "$json")"
  [[ "$commit" != unknown ]] || commit="${ISTIO_MODULE_VERSION##*-}"
  if [[ " ${want[*]} " == *" istio-crds "* ]]; then
    # All Istio CRDs in one plain YAML file (the base chart templates it verbatim).
    cp "$src/manifests/charts/base/files/crd-all.gen.yaml" "$(tool_path istio-crds).tmp"
    chmod 0644 "$(tool_path istio-crds).tmp"
    mv -f "$(tool_path istio-crds).tmp" "$(tool_path istio-crds)"
    log "istio CRDs $ISTIO_VERSION -> $(tool_path istio-crds)"
  fi
  if [[ " ${want[*]} " == *" istiod "* ]]; then
    dir="$SRC_DIR/istio-$ISTIO_VERSION"
    replaces="$(istio_replaces "$gomod")"
    write_wrapper "$dir" "$gomod" istio.io/istio "$ISTIO_MODULE_VERSION" "$replaces"
    p=istio.io/istio/pkg/version
    go_build "istiod $ISTIO_VERSION" "$dir" \
      "-X $p.buildVersion=$ISTIO_VERSION -X $p.buildGitRevision=$commit -X $p.buildStatus=Clean -X $p.buildTag=$ISTIO_VERSION -X $p.buildHub=local -X $p.buildOS=linux -X $p.buildArch=$(go env GOARCH)" \
      istio.io/istio/pilot/cmd/pilot-discovery
    install_bin pilot-discovery istiod
  fi
}

build_gateway_api_crds() {
  # Only the ReferenceGrant CRD (standard channel, plain YAML in the module):
  # the operator reads grants; meshgate implements no Gateway API routes.
  local json src f=config/crd/standard/gateway.networking.k8s.io_referencegrants.yaml
  json="$(fetch_module sigs.k8s.io/gateway-api "$GATEWAY_API_VERSION")"
  src="$(jq -r .Dir <<<"$json")"
  cp "$src/$f" "$(tool_path gateway-api-crds).tmp"
  chmod 0644 "$(tool_path gateway-api-crds).tmp"
  mv -f "$(tool_path gateway-api-crds).tmp" "$(tool_path gateway-api-crds)"
  log "gateway-api ReferenceGrant CRD $GATEWAY_API_VERSION -> $(tool_path gateway-api-crds)"
}

build_prometheus_operator_crds() {
  # The three monitoring.coreos.com CRDs the chart renders objects of, so the
  # conformance suite can apply them to a real API server (plain YAML in the module).
  local json src f out
  out="$(tool_path prometheus-operator-crds)"
  json="$(fetch_module github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")"
  src="$(jq -r .Dir <<<"$json")/example/prometheus-operator-crd"
  : >"$out.tmp"
  for f in podmonitors servicemonitors prometheusrules; do
    { echo "---"; cat "$src/monitoring.coreos.com_$f.yaml"; } >>"$out.tmp"
  done
  chmod 0644 "$out.tmp"
  mv -f "$out.tmp" "$out"
  log "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION -> $out"
}

build_helm() {
  local json gomod dir p=helm.sh/helm/v3/internal/version
  json="$(fetch_module helm.sh/helm/v3 "$HELM_VERSION")"
  gomod="$(jq -r .GoMod <<<"$json")"
  dir="$SRC_DIR/helm-$HELM_VERSION"
  write_wrapper "$dir" "$gomod" helm.sh/helm/v3 "$HELM_VERSION"
  go_build "helm $HELM_VERSION" "$dir" \
    "-X $p.version=$HELM_VERSION -X $p.gitCommit=$(origin_hash "$json") -X $p.gitTreeState=clean" helm.sh/helm/v3/cmd/helm
  install_bin helm helm
}

build_jaeger() {
  local json gomod dir replaces p=github.com/jaegertracing/jaeger/internal/version
  json="$(fetch_module github.com/jaegertracing/jaeger "$JAEGER_VERSION")"
  gomod="$(jq -r .GoMod <<<"$json")"
  dir="$SRC_DIR/jaeger-$JAEGER_VERSION"
  # `go install` refuses a module whose go.mod has replace directives; a wrapper
  # module that repeats them builds the very same dependency graph.
  replaces="$(grep -E '^replace ' "$gomod" || true)"
  write_wrapper "$dir" "$gomod" github.com/jaegertracing/jaeger "$JAEGER_VERSION" "$replaces"
  # The checksum database reachable here does not list some collector modules
  # that Jaeger pins (404 on lookup); they still come from the module proxy over
  # HTTPS and go.sum records their hashes.
  GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}go.opentelemetry.io,github.com/open-telemetry" go_build "jaeger $JAEGER_VERSION" "$dir" \
    "-X $p.latestVersion=$JAEGER_VERSION -X $p.commitSHA=$(origin_hash "$json")" github.com/jaegertracing/jaeger/cmd/jaeger
  install_bin jaeger jaeger
}

# ---- main --------------------------------------------------------------------
requested=("$@")
[[ ${#requested[@]} -gt 0 ]] || requested=("${ALL_TOOLS[@]}")

find_missing() {
  local t p
  missing=()
  for t in "${requested[@]}"; do
    p="$(tool_path "$t")" || die "unknown tool '$t' (known: ${ALL_TOOLS[*]})"
    if [[ -e "$p" ]]; then
      [[ "${1:-}" == quiet ]] || log "$t $(tool_version "$t"): cached at $p"
    else
      missing+=("$t")
    fi
  done
}
find_missing
if [[ ${#missing[@]} -gt 0 ]]; then
  mkdir -p "$BIN_DIR" "$SRC_DIR"
  # One builder at a time per cache (tests may call this concurrently); then
  # look again, the other one may have built what we need.
  exec 9>"$CACHE_ROOT/.build.lock"
  if ! flock -n 9; then
    log "waiting for another build-tools.sh to finish..."
    flock 9
    find_missing quiet
  fi
fi
[[ ${#missing[@]} -eq 0 ]] || setup_go

has() { [[ " ${missing[*]} " == *" $1 "* ]]; }
k8s_missing=()
for t in "${K8S_TOOLS[@]}"; do if has "$t"; then k8s_missing+=("$t"); fi; done
istio_missing=()
for t in istiod istio-crds; do if has "$t"; then istio_missing+=("$t"); fi; done

step() { # step <label> <fn> [args]: run one build group and time it
  local label="$1" t=$SECONDS
  shift
  log "$label: building..."
  "$@"
  log "$label: ... done in $((SECONDS - t))s"
}

# (if, not &&: errexit must stay active inside the build functions)
if [[ ${#k8s_missing[@]} -gt 0 ]]; then step "kubernetes $K8S_VERSION" build_k8s "${k8s_missing[@]}"; fi
if has etcd; then step "etcd $ETCD_VERSION" build_etcd; fi
if has kwok; then step "kwok $KWOK_VERSION" build_kwok; fi
if [[ ${#istio_missing[@]} -gt 0 ]]; then step "istio $ISTIO_VERSION" build_istio "${istio_missing[@]}"; fi
if has gateway-api-crds; then step "gateway-api CRDs $GATEWAY_API_VERSION" build_gateway_api_crds; fi
if has prometheus-operator-crds; then step "prometheus-operator CRDs $PROMETHEUS_OPERATOR_VERSION" build_prometheus_operator_crds; fi
if has helm; then step "helm $HELM_VERSION" build_helm; fi
if has jaeger; then step "jaeger $JAEGER_VERSION" build_jaeger; fi

log "all requested tools ready in $((SECONDS - TOTAL_START))s (cache: $BIN_DIR)"
