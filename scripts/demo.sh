#!/usr/bin/env bash
# weir's main job, runnable on a fresh Linux machine: build weir, validate the
# example Kafka mesh config and explain its decisions.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "weir: cargo (Rust) is needed to build weir; install it from https://rustup.rs" >&2
    exit 1
fi
cargo build --release --locked -p weir
weir=target/release/weir
cfg=examples/kafka-mesh

echo "== weir check $cfg"
"$weir" check "$cfg"
for from in cluster.local/ns/apps/sa/producer cluster.local/ns/apps/sa/intruder plaintext; do
    for port in 9092 9404; do
        echo
        echo "== from $from to kafka/kafka-0:$port"
        "$weir" explain --config "$cfg" --from "$from" --source-ip 198.18.0.99 --to kafka/kafka-0 --port "$port"
    done
done
