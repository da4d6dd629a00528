#!/usr/bin/env bash
# weir's main job on one Linux machine: build weir (release) and run
# `weir demo` — network-namespace "pods" on a bridge, two node proxies, a real
# Kafka-protocol broker (Tansu; `--broker mock` for librdkafka's mock cluster)
# and real clients, with checks of mTLS, policy and metrics. Arguments are
# passed to `weir demo` (e.g. --keep, --messages N, --broker mock).
# Needs root: `sudo scripts/demo.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

# weir needs Rust 1.85 or newer: a distribution's cargo (Debian 12 has
# 1.63) is passed over for a rustup one.
cargo_ok() {
    local v major minor
    v=$(cargo --version 2>/dev/null | awk '{print $2}') || return 1
    IFS=. read -r major minor _ <<<"$v"
    [[ -n "$major" && -n "$minor" ]] && ((major > 1 || (major == 1 && minor >= 85)))
}
# sudo resets PATH: find cargo in root's or the invoking user's rustup install.
if ! cargo_ok; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    elif [[ -n "${SUDO_USER:-}" ]]; then
        user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [[ -n "$user_home" && -x "$user_home/.cargo/bin/cargo" ]]; then
            export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}"
            export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
            PATH="$user_home/.cargo/bin:$PATH"
        fi
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "weir: cargo (Rust) is needed to build weir; install it from https://rustup.rs" >&2
    exit 2
fi
if ! cargo_ok; then
    echo "weir: $(cargo --version) is too old: weir needs Rust 1.85 or newer; install a current one from https://rustup.rs (or run 'rustup update')" >&2
    exit 2
fi
# weir (ring) and Tansu compile some C and link with `cc`.
has_cc() { local p; p=$(type -P cc) && [[ -x "$p" ]]; }
if ! has_cc && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing a C compiler (gcc) to build weir" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq || true
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends gcc libc6-dev >/dev/null || true
fi
if ! has_cc; then
    echo "weir: a C compiler (cc) is needed to build weir; install gcc (e.g. apt-get install -y gcc) and run this again" >&2
    exit 2
fi
echo "== building weir (release)" >&2
build=(cargo build --release --locked -p weir)
# Under sudo, build as the user who owns the checkout, with their toolchain,
# so target/ and their ~/.cargo do not end up owned by root; as root when
# that user cannot run this cargo (e.g. it is root's own rustup).
as_user=()
if [[ -n "${SUDO_UID:-}" && "${SUDO_UID}" != 0 && "$(stat -c %u .)" == "$SUDO_UID" ]] &&
    command -v setpriv >/dev/null 2>&1; then
    user_home=$(getent passwd "$SUDO_UID" | cut -d: -f6)
    as_user=(setpriv --reuid="$SUDO_UID" --regid="${SUDO_GID:-$SUDO_UID}" --init-groups
        env HOME="${user_home:-$HOME}" PATH="$PATH")
    if ! "${as_user[@]}" cargo --version >/dev/null 2>&1; then
        as_user=()
    fi
fi
"${as_user[@]}" "${build[@]}"
exec "${CARGO_TARGET_DIR:-target}/release/weir" demo "$@"
