#!/usr/bin/env bash
# Runs every benchmark (or the ones named) in release mode and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --bench
cargo build --release --bins
exec cargo run --release -q -p crated-bench -- "$@"
