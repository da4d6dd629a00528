#!/usr/bin/env bash
# Installs the system packages weir's tests and demo use, when missing.
# Debian/Ubuntu only; run as root. Safe to run repeatedly.
set -euo pipefail

need=()
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
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
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Real Kafka clients: librdkafka-based (confluent-kafka) and pure Python (kafka-python).
if ! python3 -c "import confluent_kafka, kafka" >/dev/null 2>&1; then
    echo "weir: installing the Python Kafka clients (confluent-kafka, kafka-python)" >&2
    python3 -m pip install -q --disable-pip-version-check confluent-kafka kafka-python \
        || python3 -m pip install -q --break-system-packages confluent-kafka kafka-python
fi

# A real Kafka-protocol broker: Tansu, built once into /opt/tansu (about 12 minutes
# on 2 cores). WEIR_SKIP_TANSU=1 skips it (the Tansu tests then need
# WEIR_SKIP_TANSU_TESTS=1).
if [[ "${WEIR_SKIP_TANSU:-}" != 1 ]] && ! command -v tansu >/dev/null 2>&1 && [[ ! -x /opt/tansu/bin/tansu ]]; then
    echo "weir: building the Tansu Kafka broker (once; about 12 minutes on 2 cores)" >&2
    cargo install --locked --quiet tansu --version 0.6.0 --features dynostore --root /opt/tansu
fi
