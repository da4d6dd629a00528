#!/usr/bin/env bash
# weir's whole test suite: formatting, lints, unit, property and end-to-end
# tests. The end-to-end tests create network namespaces and iptables rules, so
# run it as root on Linux (they clean up after themselves, also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# install-deps.sh may have installed Rust with rustup (a child shell's PATH
# does not come back).
[[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
