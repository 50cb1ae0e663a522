#!/usr/bin/env bash
# The whole test suite: installs what it needs (.ci/setup), starts a real Ceph RADOS Gateway
# (tests/rgw.sh: the S3 server CSM runs) on a free port of 127.0.0.1, runs
# `cargo test --locked` against it, stops it, then runs the packaging checks
# (tests/packaging.sh: systemd units, RPM, Ansible).
# Extra arguments go to cargo test (e.g. `tests/run.sh live`) and skip the packaging checks.
# Env: SBPS_TEST_S3_ENDPOINT set: use that S3 server instead of starting one.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/setup
mkdir -p target
if [ -z "${SBPS_TEST_S3_ENDPOINT:-}" ]; then
    rgw=$(mktemp -d /tmp/sbps-rgw.XXXXXX)
    trap 'bash tests/rgw.sh stop "$rgw"' EXIT
    # The cluster stops by itself after 90 minutes whatever happens to this script.
    bash tests/rgw.sh start "$rgw" 5400
    # shellcheck disable=SC1091
    . "$rgw/env"
    export SBPS_TEST_S3_ENDPOINT=$RGW_ENDPOINT SBPS_TEST_RGW_CONF=$CEPH_CONF
    echo "S3 server (Ceph RGW $(radosgw --version | awk '{print $3}')) on $RGW_ENDPOINT"
fi
cargo test --locked "$@"
if [ $# -eq 0 ]; then
    bash tests/packaging.sh
fi
