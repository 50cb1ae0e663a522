#!/usr/bin/env bash
# The unit under a real systemd: boots the e2e guest (see build-guest.sh) with systemd as
# PID 1, installs the files of the project's RPM (unpacked on the host with rpm2cpio), and
# runs sbps-reconcile.service exactly as shipped against the real LIO target, with an
# open-iscsi initiator on 127.0.0.1. See systemd-guest.sh for the checks.
#
# Usage: tests/e2e/systemd-vm.sh
# Env: SBPS_E2E_DIR (guest cache, default /var/tmp/sbps-reconcile-e2e), QEMU_MEM (768),
#      QEMU_TIMEOUT (900 s), CI (when set, a guest that cannot be built is a failure;
#      otherwise the test is skipped with a message).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=tests/e2e
W=${SBPS_E2E_DIR:-/var/tmp/sbps-reconcile-e2e}
export SBPS_E2E_DIR=$W
t0=$(date +%s)

set +e
bash "$HERE/build-guest.sh"
rc=$?
set -e
if [ $rc -ne 0 ]; then
    if [ $rc -eq 3 ] && [ -z "${CI:-}" ]; then
        echo "SYSTEMD E2E SKIPPED: the LIO guest cannot be built on this machine (no package mirror)."
        exit 0
    fi
    echo "SYSTEMD E2E FAIL: the LIO guest could not be built (exit $rc)"
    exit 1
fi
t1=$(date +%s)
bash .ci/build-rpm >/dev/null
rpm=$(ls target/generate-rpm/sbps-reconcile-*.rpm | head -1)
t2=$(date +%s)

run="$W/runs/systemd-$(date +%Y%m%d-%H%M%S)-$$"
share="$run/share"
mkdir -p "$share/rpmroot"
# rpm2cpio (rpm 4.18) exits 1 on this RPM's payload though it writes all of it: what counts
# is that every file the RPM lists is there.
(cd "$share/rpmroot" && { rpm2cpio "$OLDPWD/$rpm" || true; } | cpio -idm --quiet)
for file in $(rpm -qlp "$rpm"); do
    [ -e "$share/rpmroot$file" ] || { echo "SYSTEMD E2E FAIL: $file not unpacked from $rpm"; exit 1; }
done
cp "$HERE/systemd-guest.sh" "$HERE/e2e.py" "$share/"
# The exposure score systemd-analyze gives the unit file offline, on this host (systemd 252,
# as in the guest): the guest compares it with the score of the loaded unit.
systemd-analyze security --offline=true systemd/sbps-reconcile.service 2>/dev/null | tail -1 \
    >"$share/offline-security.txt"
log="$run/console.log"
set +e
# /dev/kvm on these machines only runs specially built kernels: multi-threaded TCG instead.
timeout "${QEMU_TIMEOUT:-900}" "$W/qemu/usr/bin/qemu-system-x86_64" \
    -accel tcg,thread=multi,tb-size=256 -cpu max -smp 2 -m "${QEMU_MEM:-768}" \
    -L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu \
    -nodefaults -no-user-config -display none -no-reboot -nic none \
    -serial "file:$log" -monitor none \
    -kernel "$W/vmlinuz" -initrd "$W/initrd.img" \
    -append "console=ttyS0,115200 root=/dev/vda rw rootfstype=ext4 init=/lib/systemd/systemd sbps.e2e=systemd systemd.show_status=false panic=-1 loglevel=4 quiet mitigations=off tsc=reliable" \
    -drive "file=$W/guest.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
    -fsdev "local,id=fs0,path=$share,security_model=none" -device virtio-9p-pci,fsdev=fs0,mount_tag=share \
    </dev/null 2>"$run/qemu.stderr"
qrc=$?
set -e
t3=$(date +%s)
cat "$log"
[ -s "$run/qemu.stderr" ] && { echo "=== qemu stderr:"; cat "$run/qemu.stderr"; }

echo
echo "================ sbps-reconcile.service under systemd, on a real LIO kernel ================"
echo "guest build: $((t1 - t0)) s, RPM: $((t2 - t1)) s, boot and test: $((t3 - t2)) s (qemu exit $qrc)"
echo "logs: $run"
[ -s "$share/metrics.txt" ] && sed 's/^/metric: /' "$share/metrics.txt"
if grep -q '^RESULT: PASS' "$share/result.txt" 2>/dev/null; then
    echo "SYSTEMD E2E PASS"
    exit 0
fi
echo "SYSTEMD E2E FAIL"
[ -s "$share/failures.txt" ] && sed 's/^/  failed: /' "$share/failures.txt"
[ -s "$share/journal.txt" ] && { echo "=== journal of sbps-reconcile:"; cat "$share/journal.txt"; }
exit 1
