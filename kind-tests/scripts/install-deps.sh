#!/usr/bin/env bash
# Installs the Debian packages the tests use (curl, jq, openssl; redis-server for
# the proxy's global rate-limit tests; make and a C compiler for aws-lc and the
# proxy's jemalloc) when they are missing. Needs root (or
# passwordless sudo) and apt; a machine that already has them needs neither.
set -euo pipefail

needed=()
for pair in curl:curl jq:jq openssl:openssl redis-server:redis-server make:make cc:gcc; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || needed+=("${pair#*:}")
done
[[ ${#needed[@]} -eq 0 ]] && exit 0

echo "[install-deps] installing: ${needed[*]}" >&2
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
command -v apt-get >/dev/null 2>&1 || { echo "[install-deps] apt-get not found; install ${needed[*]} by hand" >&2; exit 1; }
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${needed[@]}" >/dev/null
