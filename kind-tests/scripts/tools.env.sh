# shellcheck shell=bash
# Source me: exports the cached tool paths built by build-tools.sh
#   KUBE_APISERVER KUBE_CONTROLLER_MANAGER KUBE_SCHEDULER KUBECTL ETCD KWOK
#   ISTIOD ISTIO_CRDS GATEWAY_API_CRDS PROMETHEUS_OPERATOR_CRDS HELM  (+ MESHGATE_K8S_VERSION, MESHGATE_ISTIO_VERSION)
# Paths only: run build-tools.sh to make sure the files exist.
# Versions live in build-tools.sh alone; this asks it instead of repeating them.
_meshgate_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
eval "$("$_meshgate_scripts/build-tools.sh" --print-env)"
unset _meshgate_scripts
