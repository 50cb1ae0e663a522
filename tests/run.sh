#!/usr/bin/env bash
# The whole test suite: installs what it needs (.ci/setup), starts a real S3 server (moto)
# on a free port of 127.0.0.1, runs `cargo test --locked` against it, stops the server, then
# runs the packaging checks (tests/packaging.sh: systemd units, RPM, Ansible).
# Extra arguments go to cargo test (e.g. `tests/run.sh live`) and skip the packaging checks.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/setup
venv=${SBPS_TEST_VENV:-target/test-venv}
mkdir -p target
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The server stops by itself after an hour whatever happens to this script.
timeout 3600 "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
moto=$!
trap 'kill "$moto" 2>/dev/null || true; wait "$moto" 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
        break
    fi
    kill -0 "$moto" 2>/dev/null || { echo "moto_server died:"; cat target/moto.log; exit 1; }
    sleep 0.2
done
echo "S3 server (moto) on 127.0.0.1:$port"
SBPS_TEST_S3_ENDPOINT="http://127.0.0.1:$port" cargo test --locked "$@"
kill "$moto" 2>/dev/null || true
if [ $# -eq 0 ]; then
    bash tests/packaging.sh
fi
