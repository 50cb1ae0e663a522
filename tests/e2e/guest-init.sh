#!/bin/sh
# PID 1 in the guest (kernel command line init=/usr/local/sbin/e2e-init): mounts the basics
# and the 9p share "share" at /mnt/share, runs /mnt/share/guest.sh, then powers off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
mountpoint -q /run || mount -t tmpfs tmpfs /run
mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock
hostname lio-guest
echo "=== e2e-init: userspace up at uptime $(cut -d' ' -f1 /proc/uptime)s"
modprobe 9pnet_virtio && modprobe 9p
mkdir -p /mnt/share
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt/share; then
    if [ -f /mnt/share/guest.sh ]; then
        /bin/bash /mnt/share/guest.sh
        echo "=== guest.sh exit code $?"
    else
        echo "=== no /mnt/share/guest.sh"
    fi
    sync
    umount /mnt/share
else
    echo "=== could not mount the 9p share"
fi
echo "=== e2e-init: powering off at uptime $(cut -d' ' -f1 /proc/uptime)s"
sync
echo o >/proc/sysrq-trigger
sleep 30
