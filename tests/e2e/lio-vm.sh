#!/usr/bin/env bash
# End-to-end proof on a real Linux LIO target: boots Debian's kernel in a qemu guest
# (software emulation) where the project's release binary applies an offline catalogue with
# the real targetctl three times, and an open-iscsi initiator on 127.0.0.1 checks every LUN
# (VPD 0x80 serial, INQUIRY product ID, udev WWID, read-only, content) and how the session
# fares. See guest.sh for the checks.
#
# Usage: tests/e2e/lio-vm.sh
# Env: SBPS_E2E_DIR (guest cache, default /var/tmp/sbps-reconcile-e2e), QEMU_MEM (768),
#      SBPS_E2E_SCALE (LUNs of the scale step, 1000), SBPS_E2E_RESTORE_LIMIT (seconds the
#      scale step's targetctl restore may take, 600),
#      QEMU_TIMEOUT (1800 s), CI (when set, a guest that cannot be built is a failure;
#      otherwise the test is skipped with a message).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=tests/e2e
W=${SBPS_E2E_DIR:-/var/tmp/sbps-reconcile-e2e}
export SBPS_E2E_DIR=$W
NAME=E2E
. "$HERE/vm.sh"
t0=$(date +%s)
vm_build_guest
t1=$(date +%s)
cargo build --release --locked
t2=$(date +%s)

run="$W/runs/$(date +%Y%m%d-%H%M%S)-$$"
share="$run/share"
mkdir -p "$share"
cp target/release/sbps-reconcile "$HERE/guest.sh" "$HERE/guest-lib.sh" "$HERE/e2e.py" "$share/"
echo "${SBPS_E2E_SCALE:-1000}" >"$share/scale"
echo "${SBPS_E2E_RESTORE_LIMIT:-600}" >"$share/restore-limit"
vm_boot "$run" "$share" init=/usr/local/sbin/e2e-init
t3=$(date +%s)

echo
echo "================ sbps-reconcile on a real LIO kernel ================"
echo "guest build: $((t1 - t0)) s, release build: $((t2 - t1)) s, boot and test: $((t3 - t2)) s (qemu exit $QEMU_RC)"
echo "logs: $run"
vm_verdict "$share"
