#!/usr/bin/env bash
# Installs cargo-fuzz (pinned) into a cache outside the repository and prints
# the directory holding the `cargo-fuzz` binary. Quiet when already installed.
set -euo pipefail
version="${CARGO_FUZZ_VERSION:-0.13.2}"
root="${MESHGATE_CACHE:-$HOME/.cache/meshgate}/cargo-fuzz-$version"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
    echo "installing cargo-fuzz $version into $root" >&2
    # Built in its own target directory so the workspace's cache is untouched.
    CARGO_TARGET_DIR="$root/build" cargo install cargo-fuzz --version "=$version" --locked --root "$root" >&2
    rm -rf "$root/build"
fi
echo "$root/bin"
