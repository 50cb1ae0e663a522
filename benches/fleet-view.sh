#!/usr/bin/env bash
# `sbps-reconcile fleet` at 50 targets x 5,000 LUNs (or --targets/--images) against a real
# Ceph RGW: installs what it needs (.ci/setup), builds the release binary, runs
# benches/fleet_view.py. Prints a Markdown table on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup >&2
cargo build --release --locked >&2
exec "${SBPS_TEST_VENV:-target/test-venv}/bin/python" benches/fleet_view.py "$@"
