#!/usr/bin/env bash
# Installs the system packages weir's tests and demo use, when missing.
# Debian/Ubuntu only; run as root. Safe to run repeatedly.
set -euo pipefail

need=()
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)

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
