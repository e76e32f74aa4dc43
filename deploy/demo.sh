#!/usr/bin/env bash
# The baton demo: builds everything (release mode), starts a 3-member samplekv
# cluster with agents and a coordinator in a temp dir, runs a writer at 100
# writes/s, upgrades the cluster v1 -> v2 with live progress, prints a
# summary and cleans up. Needs only the Rust toolchain.
#
#   bash deploy/demo.sh            live progress and a summary
#   bash deploy/demo.sh --json     the summary as one JSON line on stdout
#   bash deploy/demo.sh --keep     leave the cluster running until Ctrl-C
#   bash deploy/demo.sh --ha       three coordinator replicas; the leading one
#                                  is killed mid-rollout and another takes over
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
echo "building baton and samplekv (release)..." >&2
cargo build --release --quiet --workspace --bins
export BATON_BIN_DIR="$CARGO_TARGET_DIR/release"
exec "$BATON_BIN_DIR/baton-demo" "$@"
