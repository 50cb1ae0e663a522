#!/usr/bin/env bash
# The fleet benchmark (benches/fleet.py): installs what it needs (.ci/setup: moto and boto3
# in target/test-venv), builds the release binary, and runs N = 1,000, 5,000 and 20,000
# images (or the sizes given) against moto and an IMS-shaped server on 127.0.0.1.
#   benches/fleet.sh                 # every size, 5 runs each (about 30 minutes)
#   benches/fleet.sh 1000 --runs 3   # one size
# Prints Markdown tables on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup >&2
cargo build --release --locked >&2
exec "${SBPS_TEST_VENV:-target/test-venv}/bin/python" benches/fleet.py "$@"
