#!/usr/bin/env bash
# Installs the system packages weir's tests and demo use, when missing, and
# a Rust toolchain (rustup, into ~/.cargo) if there is none.
# Debian/Ubuntu only; run as root. Safe to run repeatedly.
set -euo pipefail

# A toolchain rustup installed earlier, not on PATH yet (a fresh login
# shell, sudo's secure_path).
[[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"

need=()
# A C compiler and libc headers: ring (weir's crypto) and Tansu link C code.
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# rustup's installer, when there is no cargo.
command -v cargo >/dev/null 2>&1 || { command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates); }
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# Debian and Ubuntu ship python3 without pip.
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# kcat (librdkafka's CLI client) for the gateway tests; mosquitto for TLS passthrough tests.
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)

if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "weir: missing ${need[*]}; run as root (or install them) so they can be installed" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "weir: missing ${need[*]} and no apt-get to install them; install them with your package manager" >&2
        exit 1
    fi
    echo "weir: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh VM's unattended-upgrades may hold the dpkg lock for a while.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Rust (weir needs 1.85 or newer): rustup's stable toolchain with rustfmt and
# clippy, when there is no cargo at all.
if ! command -v cargo >/dev/null 2>&1; then
    echo "weir: installing Rust (rustup, stable, with rustfmt and clippy) into $HOME/.cargo" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --quiet --profile minimal -c rustfmt -c clippy
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# Real Kafka clients: librdkafka-based (confluent-kafka) and pure Python (kafka-python).
if ! python3 -c "import confluent_kafka, kafka" >/dev/null 2>&1; then
    echo "weir: installing the Python Kafka clients (confluent-kafka, kafka-python)" >&2
    # A Debian/Ubuntu python refuses system-wide installs (PEP 668): the first
    # attempt's complaint is not shown; the second says what really failed.
    python3 -m pip install -q --disable-pip-version-check confluent-kafka kafka-python 2>/dev/null \
        || python3 -m pip install -q --disable-pip-version-check --break-system-packages \
            confluent-kafka kafka-python
fi

# A real Kafka-protocol broker: Tansu, built once into /opt/tansu (about 12 minutes
# on 2 cores). WEIR_SKIP_TANSU=1 skips it (the Tansu tests then need
# WEIR_SKIP_TANSU_TESTS=1).
if [[ "${WEIR_SKIP_TANSU:-}" != 1 ]] && ! command -v tansu >/dev/null 2>&1 && [[ ! -x /opt/tansu/bin/tansu ]]; then
    echo "weir: building the Tansu Kafka broker (once; about 12 minutes on 2 cores)" >&2
    cargo install --locked --quiet tansu --version 0.6.0 --features dynostore --root /opt/tansu
fi
