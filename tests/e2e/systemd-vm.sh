#!/usr/bin/env bash
# The unit under a real systemd: boots the e2e guest (see build-guest.sh) with systemd as
# PID 1, installs the files of the project's RPM (unpacked on the host with rpm2cpio), and
# runs sbps-reconcile.service exactly as shipped against the real LIO target, with an
# open-iscsi initiator on 127.0.0.1. See systemd-guest.sh for the checks.
#
# Usage: tests/e2e/systemd-vm.sh
# Env: SBPS_E2E_DIR (guest cache, default /var/tmp/sbps-reconcile-e2e), QEMU_MEM (768),
#      QEMU_TIMEOUT (1800 s), CI (when set, a guest that cannot be built is a failure;
#      otherwise the test is skipped with a message).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=tests/e2e
W=${SBPS_E2E_DIR:-/var/tmp/sbps-reconcile-e2e}
export SBPS_E2E_DIR=$W
NAME="SYSTEMD E2E"
. "$HERE/vm.sh"
t0=$(date +%s)
vm_build_guest
t1=$(date +%s)
bash .ci/build-rpm >/dev/null
rpm=$(ls target/rpm/sbps-reconcile-*.rpm | head -1)
t2=$(date +%s)

run="$W/runs/systemd-$(date +%Y%m%d-%H%M%S)-$$"
share="$run/share"
mkdir -p "$share/rpmroot"
(cd "$share/rpmroot" && rpm2cpio "$OLDPWD/$rpm" | cpio -idm --quiet)
for file in $(rpm -qlp "$rpm"); do
    [ -e "$share/rpmroot$file" ] || { echo "$NAME FAIL: $file not unpacked from $rpm"; exit 1; }
done
cp "$HERE/systemd-guest.sh" "$HERE/guest-lib.sh" "$HERE/e2e.py" "$share/"
# The exposure score systemd-analyze gives the unit file offline, on this host (systemd 252,
# as in the guest): the guest compares it with the score of the loaded unit.
systemd-analyze security --offline=true systemd/sbps-reconcile.service 2>/dev/null | tail -1 \
    >"$share/offline-security.txt"
vm_boot "$run" "$share" init=/lib/systemd/systemd sbps.e2e=systemd systemd.show_status=false
t3=$(date +%s)

echo
echo "================ sbps-reconcile.service under systemd, on a real LIO kernel ================"
echo "guest build: $((t1 - t0)) s, RPM: $((t2 - t1)) s, boot and test: $((t3 - t2)) s (qemu exit $QEMU_RC)"
echo "logs: $run"
vm_verdict "$share"
