#!/usr/bin/env bash
# Runs one fuzz target under libFuzzer: `bash fuzz/run.sh TARGET [SECONDS]`
# (default 600). Targets: normalize_path route_match snapshot_compile
# jwt_verify spiffe_id x509_identity yaml_json.
#
# New inputs libFuzzer finds go to $MESHGATE_CACHE/fuzz-corpus/TARGET, not to
# the checked-in corpus (fuzz/corpus/TARGET is read only); crashes go to
# fuzz/artifacts/TARGET/ (ignored by git). A crash input that is fixed is kept
# in fuzz/regressions/TARGET/, which `cargo test -p meshgate-fuzz` replays.
#
# Environment: FUZZ_SANITIZER (address, the default, or none), FUZZ_TARGET_DIR,
# MESHGATE_CACHE (default ~/.cache/meshgate).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: bash fuzz/run.sh TARGET [SECONDS]}"
seconds="${2:-600}"
if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
    echo "unknown target $target; one of: $(cd fuzz/fuzz_targets && ls | sed 's/\.rs$//' | tr '\n' ' ')" >&2
    exit 2
fi
cache="${MESHGATE_CACHE:-$HOME/.cache/meshgate}"
PATH="$(bash fuzz/scripts/install-cargo-fuzz.sh):$PATH"
export PATH
# cargo-fuzz passes -Z flags (sanitizers, coverage passes): RUSTC_BOOTSTRAP lets
# the stable toolchain take them. Its own target directory: the instrumented
# build shares nothing with normal builds.
export RUSTC_BOOTSTRAP=1
target_dir="${FUZZ_TARGET_DIR:-$cache/fuzz-target}"
new="$cache/fuzz-corpus/$target"
mkdir -p "$new" "fuzz/artifacts/$target"
exec cargo fuzz run --fuzz-dir fuzz --features libfuzzer --target-dir "$target_dir" \
    --sanitizer "${FUZZ_SANITIZER:-address}" \
    "$target" "$new" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="fuzz/artifacts/$target/"
