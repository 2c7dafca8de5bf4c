#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds the binaries the integration tests drive,
# then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
