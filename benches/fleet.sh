#!/usr/bin/env bash
# The fleet benchmark (benches/fleet.py): installs what it needs (.ci/setup: Ceph RGW, moto
# and boto3 in target/test-venv), builds the release binary, and runs N = 1,000, 5,000 and
# 20,000 images (or the sizes given) against each S3 server (Ceph RGW with beast's default
# tcp_nodelay=0, with tcp_nodelay=1, and moto) and an IMS-shaped server on 127.0.0.1.
#   benches/fleet.sh                                   # every size and server, 5 runs each
#   benches/fleet.sh 1000 5000 --runs 3                # two sizes
#   benches/fleet.sh 1000 --servers rgw-nodelay        # one size, one server
# Prints Markdown tables on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup >&2
cargo build --release --locked >&2
exec "${SBPS_TEST_VENV:-target/test-venv}/bin/python" benches/fleet.py "$@"
