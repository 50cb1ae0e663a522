# Sourced by lio-vm.sh and systemd-vm.sh (from the repository's root): building the guest
# and booting it. Needs W (the guest cache) and NAME (what the test prints, "E2E" ...).

# vm_build_guest: builds (or finds cached) the guest. Where it cannot be built for want of a
# package mirror, the test is skipped (exit 0), except under CI where that is a failure.
vm_build_guest() {
    local rc
    set +e
    bash tests/e2e/build-guest.sh
    rc=$?
    set -e
    [ $rc -eq 0 ] && return 0
    if [ $rc -eq 3 ] && [ -z "${CI:-}" ]; then
        echo "$NAME SKIPPED: the LIO guest cannot be built on this machine (no package mirror)."
        exit 0
    fi
    echo "$NAME FAIL: the LIO guest could not be built (exit $rc)"
    exit 1
}

# vm_boot RUN SHARE INIT...: boots the guest with SHARE as the 9p share "share" and INIT...
# on the kernel command line, the console in RUN/console.log. Sets QEMU_RC.
vm_boot() {
    local run=$1 share=$2
    shift 2
    set +e
    # /dev/kvm on these machines only runs specially built kernels: multi-threaded TCG instead.
    timeout "${QEMU_TIMEOUT:-1800}" "$W/qemu/usr/bin/qemu-system-x86_64" \
        -accel tcg,thread=multi,tb-size=256 -cpu max -smp 2 -m "${QEMU_MEM:-768}" \
        -L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu \
        -nodefaults -no-user-config -display none -no-reboot -nic none \
        -serial "file:$run/console.log" -monitor none \
        -kernel "$W/vmlinuz" -initrd "$W/initrd.img" \
        -append "console=ttyS0,115200 root=/dev/vda rw rootfstype=ext4 $* panic=-1 loglevel=4 quiet mitigations=off tsc=reliable" \
        -drive "file=$W/guest.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
        -fsdev "local,id=fs0,path=$share,security_model=none" -device virtio-9p-pci,fsdev=fs0,mount_tag=share \
        </dev/null 2>"$run/qemu.stderr"
    QEMU_RC=$?
    set -e
    cat "$run/console.log"
    if [ -s "$run/qemu.stderr" ]; then
        echo "=== qemu stderr:"
        cat "$run/qemu.stderr"
    fi
}

# vm_verdict SHARE: prints the metrics and NAME PASS or NAME FAIL (with the failed checks),
# and exits accordingly.
vm_verdict() {
    local share=$1
    [ -s "$share/metrics.txt" ] && sed 's/^/metric: /' "$share/metrics.txt"
    if grep -q '^RESULT: PASS' "$share/result.txt" 2>/dev/null; then
        echo "$NAME PASS"
        exit 0
    fi
    echo "$NAME FAIL"
    [ -s "$share/failures.txt" ] && sed 's/^/  failed: /' "$share/failures.txt"
    [ -s "$share/journal.txt" ] && { echo "=== journal of sbps-reconcile:"; cat "$share/journal.txt"; }
    exit 1
}
