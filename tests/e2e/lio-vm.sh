#!/usr/bin/env bash
# End-to-end proof on a real Linux LIO target: boots Debian's kernel in a qemu guest
# (software emulation) where the project's release binary applies an offline catalogue with
# the real targetctl three times, and an open-iscsi initiator on 127.0.0.1 checks every LUN
# (VPD 0x80 serial, INQUIRY product ID, udev WWID, read-only, content) and how the session
# fares. See guest.sh for the checks.
#
# Usage: tests/e2e/lio-vm.sh
# Env: SBPS_E2E_DIR (guest cache, default /var/tmp/sbps-reconcile-e2e), QEMU_MEM (768),
#      SBPS_E2E_SCALE (LUNs of the scale step, 1000),
#      QEMU_TIMEOUT (1800 s), CI (when set, a guest that cannot be built is a failure;
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
        echo "E2E SKIPPED: the LIO guest cannot be built on this machine (no package mirror)."
        exit 0
    fi
    echo "E2E FAIL: the LIO guest could not be built (exit $rc)"
    exit 1
fi
t1=$(date +%s)
cargo build --release --locked
t2=$(date +%s)

run="$W/runs/$(date +%Y%m%d-%H%M%S)-$$"
share="$run/share"
mkdir -p "$share"
cp target/release/sbps-reconcile "$HERE/guest.sh" "$HERE/e2e.py" "$share/"
echo "${SBPS_E2E_SCALE:-1000}" >"$share/scale"
log="$run/console.log"
set +e
# /dev/kvm on these machines only runs specially built kernels: multi-threaded TCG instead.
timeout "${QEMU_TIMEOUT:-1800}" "$W/qemu/usr/bin/qemu-system-x86_64" \
    -accel tcg,thread=multi,tb-size=256 -cpu max -smp 2 -m "${QEMU_MEM:-768}" \
    -L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu \
    -nodefaults -no-user-config -display none -no-reboot -nic none \
    -serial "file:$log" -monitor none \
    -kernel "$W/vmlinuz" -initrd "$W/initrd.img" \
    -append "console=ttyS0,115200 root=/dev/vda rw rootfstype=ext4 init=/usr/local/sbin/e2e-init panic=-1 loglevel=4 quiet mitigations=off tsc=reliable" \
    -drive "file=$W/guest.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
    -fsdev "local,id=fs0,path=$share,security_model=none" -device virtio-9p-pci,fsdev=fs0,mount_tag=share \
    </dev/null 2>"$run/qemu.stderr"
qrc=$?
set -e
t3=$(date +%s)
cat "$log"
[ -s "$run/qemu.stderr" ] && { echo "=== qemu stderr:"; cat "$run/qemu.stderr"; }

echo
echo "================ sbps-reconcile on a real LIO kernel ================"
echo "guest build: $((t1 - t0)) s, release build: $((t2 - t1)) s, boot and test: $((t3 - t2)) s (qemu exit $qrc)"
echo "logs: $run"
[ -s "$share/metrics.txt" ] && sed 's/^/metric: /' "$share/metrics.txt"
if grep -q '^RESULT: PASS' "$share/result.txt" 2>/dev/null; then
    echo "E2E PASS"
    exit 0
fi
echo "E2E FAIL"
[ -s "$share/failures.txt" ] && sed 's/^/  failed: /' "$share/failures.txt"
exit 1
