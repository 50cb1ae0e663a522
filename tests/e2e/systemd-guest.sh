#!/bin/bash
# Runs inside the e2e guest with systemd as PID 1 (started by sbps-e2e.service, see
# build-guest.sh). /mnt/share holds the files of the project's RPM, unpacked (rpmroot/),
# e2e.py and the host's offline `systemd-analyze security` score; results go back there:
# result.txt ("RESULT: PASS" or "RESULT: FAIL"), failures.txt, metrics.txt, journal.txt.
#
# What it proves, with the unit exactly as shipped: the RPM's files installed, a policy in
# /etc/sbps-reconcile, then `systemctl start sbps-reconcile.service`
#   restore     the first run, lio.apply: restore: the real targetctl under the unit's
#               sandbox (module loading, configfs, /dev, udev) builds the target
#   initiator   an open-iscsi initiator on 127.0.0.1 reads every LUN's identity and content
#   journal     `journalctl -u sbps-reconcile -p warning` holds exactly the skipped image, and
#               a query by field (REASON_CODE=, IMAGE_ID=) returns its line
#   no-op       a second start changes nothing
#   in place    lio.apply: configfs, an image added: applied in place under the same unit
#   timer       enabled, active, its next run listed
#   security    `systemd-analyze security` prints the same exposure as offline
S=/mnt/share
M=/var/lib/cps-local/boot-images
P=/etc/sbps-reconcile/policy.yaml
IMS=/etc/sbps-reconcile/images.json
IQN=iqn.2023-06.csm.iscsi:lio-guest
UNIT=sbps-reconcile.service
. $S/guest-lib.sh
# The journal lines of the unit's last run (after the cursor `start` takes).
CURSOR=
last_run() { journalctl -q -o cat -u sbps-reconcile --after-cursor="$CURSOR" "$@"; }
# start: `systemctl start` as a playbook does, timed; sets RC.
start() {
    local t0 t1
    CURSOR=$(journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p')
    t0=$(now)
    systemctl start $UNIT
    RC=$?
    t1=$(now)
    metric "$1_start_seconds" "$(awk "BEGIN{print $t1 - $t0}")"
    last_run | sed 's/^/    | /' | head -30
}
# run_says PATTERN: the last run's journal holds a line matching PATTERN.
run_says() { last_run | grep -q -- "$1"; }
# The plan as the tool sees it now (every projection, kept ones included), for e2e.py check.
plan_now() { sbps-reconcile --policy $P --dry-run --output json >"$1" 2>/dev/null; }
write_policy() { # $1 apply mode
    cat >$P <<EOS
target:
  iqn: "iqn.2023-06.csm.iscsi:{hostname}"
  portals: ["127.0.0.1:3260"]
lio:
  apply: $1
  ledger_file: /var/lib/sbps-reconcile/luns.json
catalogue:
  bucket: boot-images
  mount: $M
  ims:
    file: $IMS
safety:
  max_removals: 10
EOS
}

step "systemd $(systemctl --version | head -1 | cut -d' ' -f2) as PID 1 ($(cat /proc/1/comm)), kernel $(uname -r)"
check "PID 1 is systemd" [ "$(cat /proc/1/comm)" = systemd ]
# Not `is-system-running --wait`: this script is part of the boot transaction it would wait on.
echo "  system: $(systemctl is-system-running)"
systemctl --failed --no-legend | sed 's/^/  failed unit: /'

step "install the RPM's files (rpm2cpio | cpio on the host) and the CSM-style target.service"
cp -a $S/rpmroot/. /
find $S/rpmroot -type f | sed "s|$S/rpmroot||; s/^/  /"
# SLES (CSM) ships target.service, which the unit requires; Debian's targetcli-fb calls its
# unit rtslib-fb-targetctl.service and restores another file. This one does what SLES's does.
cat >/etc/systemd/system/target.service <<'EOS'
[Unit]
Description=Restore LIO kernel target configuration (as SLES's target.service does)
Requires=sys-kernel-config.mount
After=sys-kernel-config.mount network.target local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/targetctl restore /etc/target/saveconfig.json
ExecStop=/usr/bin/targetctl clear

[Install]
WantedBy=multi-user.target
EOS
systemctl daemon-reload
check "sbps-reconcile.service is installed from the RPM" [ -f /usr/lib/systemd/system/$UNIT ]
check "the unit is the shipped one" cmp -s /usr/lib/systemd/system/$UNIT $S/rpmroot/usr/lib/systemd/system/$UNIT
check "the binary is the RPM's" [ -x /usr/bin/sbps-reconcile ]
echo "  target modules before the first run: $(lsmod | awk '/^target_core_mod|^iscsi_target_mod/{print $1}' | tr '\n' ' ')"

step "catalogue: an IMS file and image files on a mount point (tmpfs standing in for s3fs)"
mkdir -p $M
mount -t tmpfs -o size=256m tmpfs $M
py catalogue init $M $IMS
check "the mount is a mount point" mountpoint -q $M
write_policy restore

step "first start, lio.apply: restore: the real targetctl under the unit's sandbox"
start restore
check "systemctl start succeeds (exit $RC)" [ $RC = 0 ]
check "the unit's result is success" [ "$(systemctl show -p Result --value $UNIT)" = success ]
check "the run applied with a restore" run_says '^summary: applied: 5 added'
# The journal of a cold start: each decision and one summary, no text report, no diff (the
# diff is kept beside the backups and named in the summary).
metric cold_start_journal_lines "$(last_run | wc -l)"
check "one summary line in the cold start's journal" [ "$(last_run | grep -c '^summary:')" = 1 ]
check "no diff line in the journal" [ "$(last_run | grep -cE '^(--- current|\+\+\+ desired|@@ )')" = 0 ]
diff_file=$(last_run | sed -n 's/^summary: .*; the diff: //p')
check "the summary names the diff, kept beside the backups" [ -s "$diff_file" ]
case $diff_file in /etc/target/backup/saveconfig-*-diff.txt) ;; *) fail "diff kept at '$diff_file'" ;; esac
check "targetctl restore ran (target modules loaded)" grep -q '^target_core_mod' /proc/modules
check "saveconfig.json written" [ -s /etc/target/saveconfig.json ]
check "the ledger written in the StateDirectory" [ -s /var/lib/sbps-reconcile/luns.json ]

step "initiator: discovery and login over 127.0.0.1; every LUN's identity and content"
for m in iscsi_tcp sd_mod sg; do modprobe $m; done
systemctl start iscsid.service 2>/dev/null || iscsid
sleep 1
iscsiadm -m discovery -t st -p 127.0.0.1 >/dev/null || fail "discovery"
iscsiadm -m node -T $IQN -p 127.0.0.1:3260 -l >/dev/null || fail "login"
udevadm settle -t 30; sleep 1; udevadm settle -t 30
plan_now /tmp/plan1.json
py check /tmp/plan1.json || fail "the initiator reads every projection's identity and content"

step "journal: the skipped image at warning, and queries by field"
journalctl -q -o cat -u sbps-reconcile -p warning >/tmp/warnings.txt
sed 's/^/    | /' /tmp/warnings.txt
check "exactly one line at warning and above" [ "$(wc -l </tmp/warnings.txt)" = 1 ]
check "... the image without an etag" grep -q 'skipped rootfs image "e2e-img-broken" (id img-broken): missing_etag' /tmp/warnings.txt
journalctl -q -o cat -u sbps-reconcile REASON_CODE=missing_etag >/tmp/by-reason.txt
check "REASON_CODE=missing_etag returns its line" grep -q 'img-broken' /tmp/by-reason.txt
check "... and only it" [ "$(wc -l </tmp/by-reason.txt)" = 1 ]
journalctl -q -o json -u sbps-reconcile IMAGE_ID=img-a >/tmp/by-image.json
check "IMAGE_ID=img-a returns its projection with LUN and storage object" python3 -c '
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert entries, "no entry"
assert all(e["IMAGE_ID"] == "img-a" for e in entries)
assert any(e.get("ACTION") == "add" and "LUN" in e and "STORAGE_OBJECT" in e for e in entries)
' /tmp/by-image.json

step "second start: a no-op"
start noop
check "systemctl start succeeds (exit $RC)" [ $RC = 0 ]
check "nothing changed" run_says '^summary: no changes'

step "in place: lio.apply: configfs, one image added, under the same unit"
write_policy configfs
py catalogue add $M $IMS img-e 2 eeee0001
start inplace
check "systemctl start succeeds (exit $RC)" [ $RC = 0 ]
check "the run applied in place" run_says '^summary: applied: 1 added'
iscsiadm -m session -R >/dev/null; udevadm settle -t 30; sleep 1; udevadm settle -t 30
plan_now /tmp/plan2.json
py check /tmp/plan2.json || fail "the initiator reads every projection after the in-place apply"

step "timer"
systemctl enable --now sbps-reconcile.timer
check "the timer is active" systemctl is-active -q sbps-reconcile.timer
systemctl list-timers --all --no-legend sbps-reconcile.timer | tee /tmp/timers.txt | sed 's/^/    | /'
check "its next run is listed" python3 -c '
import sys
line = open(sys.argv[1]).read().split()
assert line and line[0] not in ("-", "n/a"), line
' /tmp/timers.txt
systemctl stop sbps-reconcile.timer

step "systemd-analyze security: the same exposure as offline"
online=$(systemd-analyze security $UNIT 2>/dev/null | tail -1)
offline=$(cat $S/offline-security.txt)
echo "  online:  $online"
echo "  offline: $offline (host)"
check "the same exposure score" [ "$(echo "$online" | grep -o '[0-9.]* [A-Z]*')" = "$(echo "$offline" | grep -o '[0-9.]* [A-Z]*')" ]

journalctl -q -o short-monotonic -u sbps-reconcile >$S/journal.txt
step "result"
echo "RESULT: $RESULT" | tee $S/result.txt
