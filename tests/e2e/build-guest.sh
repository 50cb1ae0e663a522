#!/usr/bin/env bash
# Builds (once, cached) a qemu guest that runs the real Linux LIO target and an open-iscsi
# initiator: Debian bookworm's kernel, targetcli-fb / python3-rtslib-fb (targetctl),
# open-iscsi, sg3-utils and udev. Adapted from the liovm tool of this project's shared docs.
#
# Usage: build-guest.sh   (cache dir: $SBPS_E2E_DIR, default /var/tmp/sbps-reconcile-e2e)
# Produces in the cache dir: qemu/usr/bin/qemu-system-x86_64 (unpacked, not installed),
# guest.img (ext4 root), initrd.img, vmlinuz, and .built (the hash of this script).
# Needs root and Debian's package mirror (apt). Exits 3 when the mirror cannot be reached.
set -euo pipefail
W=${SBPS_E2E_DIR:-/var/tmp/sbps-reconcile-e2e}
HERE=$(cd "$(dirname "$0")" && pwd)
stamp=$(cat "$HERE/build-guest.sh" "$HERE/guest-init.sh" | sha256sum | cut -c1-16)
if [ -f "$W/.built" ] && [ "$(cat "$W/.built")" = "$stamp" ] \
   && [ -e "$W/guest.img" ] && [ -x "$W/qemu/usr/bin/qemu-system-x86_64" ]; then
    echo "guest: cached in $W"
    exit 0
fi
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || { echo "guest: no Debian mirror configured for apt" >&2; exit 3; }
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$W"
cd "$W"
t0=$(date +%s)

# 1. Host packages. qemu-system-x86 7.2 cannot be installed with apt beside the preinstalled
#    qemu-utils 10 (it Breaks qemu-system-common < 8.0), so only its libraries and firmware
#    are installed and its two .deb files are unpacked into $W/qemu.
pkgs="linux-image-amd64 debootstrap e2fsprogs kmod initramfs-tools seabios ipxe-qemu qemu-system-data
 libaio1 libbpf1 libcapstone4 libfdt1 libfuse3-3 libglib2.0-0 libgmp10 libgnutls30 libibverbs1 libjpeg62-turbo
 libnuma1 libpixman-1-0 libpmem1 libpng16-16 librdmacm1 libsasl2-2 libseccomp2 libslirp0 libudev1 liburing2
 libvdeplug2 libzstd1"
missing=$(for p in $pkgs; do dpkg-query -W -f='${db:Status-Abbrev}\n' "$p" 2>/dev/null | grep -q '^ii' || echo "$p"; done)
if [ -n "$missing" ]; then
    apt-get update -qq </dev/null || { echo "guest: apt-get update failed (no mirror?)" >&2; exit 3; }
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs </dev/null >/dev/null \
        || { echo "guest: cannot install host packages" >&2; exit 3; }
fi
if [ ! -x "$W/qemu/usr/bin/qemu-system-x86_64" ]; then
    rm -rf "$W/debs" "$W/qemu"
    mkdir -p "$W/debs" "$W/qemu"
    (cd "$W/debs" && apt-get download qemu-system-x86 qemu-system-common </dev/null >/dev/null) \
        || { echo "guest: cannot download qemu" >&2; exit 3; }
    for d in "$W"/debs/qemu-system-*.deb; do dpkg-deb -x "$d" "$W/qemu"; done
fi
"$W/qemu/usr/bin/qemu-system-x86_64" --version | head -1
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
echo "guest kernel: $KVER"
t1=$(date +%s)

# 2. Guest root file system (debootstrap; the base tree is cached, keyed by its packages).
#    systemd is there for tests/e2e/systemd-vm.sh, which boots it as PID 1; lio-vm.sh boots
#    the guest with its own init instead.
include=targetcli-fb,python3-rtslib-fb,open-iscsi,kmod,sg3-utils,udev,iproute2,procps,systemd
if [ ! -f "$W/rootfs.base/.done" ] || [ "$(cat "$W/rootfs.base/.done")" != "$include" ]; then
    rm -rf "$W/rootfs.base"
    mkdir -p "$W/rootfs.base" "$W/debcache"
    debootstrap --variant=minbase --cache-dir="$W/debcache" --include="$include" \
        bookworm "$W/rootfs.base" "$MIRROR" >"$W/debootstrap.log" 2>&1 \
        || { echo "guest: debootstrap failed, see $W/debootstrap.log" >&2; tail -5 "$W/debootstrap.log" >&2; exit 3; }
    echo "$include" >"$W/rootfs.base/.done"
fi
t2=$(date +%s)

# 3. A copy with the kernel modules LIO, iSCSI and 9p need, and our init.
rm -rf "$W/rootfs"
cp -a "$W/rootfs.base" "$W/rootfs"
R="$W/rootfs"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/locale/* "$R"/var/lib/apt/lists/*
MODS="configfs target_core_mod target_core_file target_core_iblock iscsi_target_mod iscsi_tcp libiscsi
      libiscsi_tcp scsi_transport_iscsi sd_mod sg 9p 9pnet_virtio crc32c_generic crc32c-intel loop"
mkdir -p "$R/lib/modules/$KVER"
for m in $MODS; do
    modprobe -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r f; do
    mkdir -p "$R$(dirname "$f")"
    cp "$f" "$R$f"
done
cp /lib/modules/"$KVER"/modules.order /lib/modules/"$KVER"/modules.builtin* "$R/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$R" "$KVER"
install -m 0755 "$HERE/guest-init.sh" "$R/usr/local/sbin/e2e-init"
echo lio-guest >"$R/etc/hostname"
mkdir -p "$R/etc/target" "$R/mnt/share"
grep -q '^InitiatorName=' "$R/etc/iscsi/initiatorname.iscsi" 2>/dev/null \
    || echo "InitiatorName=iqn.1993-08.org.debian:01:sbps-e2e" >"$R/etc/iscsi/initiatorname.iscsi"
# Under systemd (systemd-vm.sh: sbps.e2e=systemd on the kernel command line) this unit runs
# /mnt/share/systemd-guest.sh once the system is up, then powers off.
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
cat >"$R/etc/systemd/system/sbps-e2e.service" <<'EOS'
[Unit]
Description=sbps-reconcile E2E under systemd (test driver)
ConditionKernelCommandLine=sbps.e2e=systemd
After=multi-user.target

[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=30min
ExecStart=/bin/sh -c 'modprobe 9pnet_virtio; modprobe 9p; mkdir -p /mnt/share; mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt/share && /bin/bash /mnt/share/systemd-guest.sh; echo "=== systemd-guest.sh exit code $?"; sync; umount /mnt/share'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
EOS
ln -sf /etc/systemd/system/sbps-e2e.service "$R/etc/systemd/system/multi-user.target.wants/sbps-e2e.service"
# No login prompt on the serial console the test reads.
ln -sf /dev/null "$R/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$R/etc/systemd/system/getty@tty1.service"

# 4. ext4 image (mkfs.ext4 -d: no loop mount needed) and a minimal initramfs.
size=$(( $(du -sm "$R" | cut -f1) + 256 ))
rm -f "$W/guest.img"
mkfs.ext4 -q -F -L e2e-root -d "$R" "$W/guest.img" "${size}M"
CONF="$W/initramfs-conf"
rm -rf "$CONF"
mkdir -p "$CONF"/{conf.d,hooks,scripts}
cp -r /etc/initramfs-tools/scripts/. "$CONF/scripts/" 2>/dev/null || true
printf 'MODULES=list\nBUSYBOX=auto\nKEYMAP=n\nCOMPRESS=gzip\nCOMPRESSLEVEL=1\nRUNSIZE=10%%\nFSTYPE=ext4\n' >"$CONF/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk ext4 >"$CONF/modules"
mkinitramfs -d "$CONF" -o "$W/initrd.img" "$KVER" 2>/dev/null
cp "/boot/vmlinuz-$KVER" "$W/vmlinuz"
rm -rf "$R"
echo "$stamp" >"$W/.built"
t3=$(date +%s)
echo "guest: built in $((t3 - t0)) s (host packages $((t1 - t0)) s, debootstrap $((t2 - t1)) s, image $((t3 - t2)) s)"
