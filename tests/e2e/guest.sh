#!/bin/bash
# Runs inside the e2e guest as root (started by e2e-init). /mnt/share holds the project's
# release binary (sbps-reconcile) and e2e.py; results go back there: result.txt
# ("RESULT: PASS" or "RESULT: FAIL"), metrics.txt, report1-3.json and the run logs.
S=/mnt/share
M=/var/lib/cps-local/boot-images
P=/etc/sbps-reconcile/policy.yaml
IMS=/etc/sbps-reconcile/images.json
CALLS=/run/targetctl.calls
RESULT=PASS
: >$S/failures.txt
: >$S/metrics.txt
step() { echo; echo "##### [uptime $(cut -d' ' -f1 /proc/uptime)s] $*"; }
ok() { echo "  ok   $*"; }
fail() { echo "  FAIL $*"; echo "$*" >>$S/failures.txt; RESULT=FAIL; }
check() { if "${@:2}"; then ok "$1"; else fail "$1"; fi; }
py() { python3 $S/e2e.py "$@"; }
session_state() { iscsiadm -m session -P 1 2>/dev/null | awk -F': ' '/iSCSI Session State/{print $2; exit}'; }
conn_errors_since() { dmesg | sed -n "/$1/,\$p" | grep -c 'conn error' || true; }
calls() { wc -l <$CALLS; }

step "kernel $(uname -r): LIO, iSCSI initiator, udev"
for m in configfs target_core_mod target_core_file iscsi_target_mod iscsi_tcp sd_mod sg; do
    modprobe $m || fail "modprobe $m"
done
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
ip link set lo up
/lib/systemd/systemd-udevd --daemon 2>/dev/null
udevadm trigger --action=add >/dev/null 2>&1
udevadm settle -t 30

step "catalogue (offline: IMS file + image files with random content), policy, targetctl wrapper"
install -m 0755 $S/sbps-reconcile /usr/local/bin/sbps-reconcile
mkdir -p /etc/sbps-reconcile
py catalogue init $M $IMS
find $M -type f | sort | xargs ls -l
# Every targetctl call the tool makes is logged, so run 3 can show there were none.
cat >/usr/local/sbin/targetctl-logged <<EOS
#!/bin/sh
echo "\$*" >>$CALLS
exec /usr/bin/targetctl "\$@"
EOS
chmod 755 /usr/local/sbin/targetctl-logged
: >$CALLS
cat >$P <<EOS
target:
  iqn: "iqn.2023-06.csm.iscsi:{hostname}"
  portals: ["127.0.0.1:3260"]
lio:
  saveconfig: /etc/target/saveconfig.json
  targetctl: /usr/local/sbin/targetctl-logged
  backup_dir: /etc/target/backup
catalogue:
  bucket: boot-images
  mount: $M
  ims:
    file: $IMS
safety:
  max_removals: 10
EOS

step "run 1: the real sbps-reconcile applies the policy with the real targetctl"
sbps-reconcile --policy $P --output json --detailed-exitcode >$S/report1.json 2>$S/run1.stderr
rc=$?
cat $S/run1.stderr
check "run 1 exits 2 (changes applied)" [ $rc -eq 2 ]
py expect $S/report1.json 'r["applied"] is True' 'r["summary"]["add"] == 5' \
    'skipped.get("img-broken") == "missing_etag"' 'len(r["skipped"]) == 1' \
    || fail "run 1 report"
check "run 1 called targetctl restore once and save once" \
    [ "$(grep -c '^restore' $CALLS)" = 1 -a "$(grep -c '^save' $CALLS)" = 1 ]
targetctl save /tmp/kernel1.json >/dev/null 2>&1
grep -c '"emulate_model_alias": 1' /tmp/kernel1.json | sed 's/^/  storage objects with emulate_model_alias 1 (as saved by the kernel): /'

step "initiator: discovery and login over 127.0.0.1"
iscsid || fail "iscsid"
sleep 1
iscsiadm -m discovery -t st -p 127.0.0.1 || fail "discovery"
iscsiadm -m node -l || fail "login"
udevadm settle -t 30
sleep 1
udevadm settle -t 30
iscsiadm -m session

step "run 1: every projection as the initiator sees it"
py check $S/report1.json || fail "initiator view after run 1"

step "run 2: one image added, one removed, one with a new etag; a reader on a kept LUN"
py catalogue change $M $IMS
lun_a=$(python3 -c 'import json,sys; print([p["lun"] for p in json.load(open(sys.argv[1]))["projections"] if p["image_id"]=="img-a"][0])' $S/report1.json)
dev_a=$(for d in /sys/block/sd*; do h=$(basename "$(readlink -f $d/device)"); [ "${h##*:}" = "$lun_a" ] && basename $d; done)
echo "  reading /dev/$dev_a (LUN $lun_a, img-a) every 50 ms with O_DIRECT"
echo "E2E-MARKER-RUN2" >/dev/kmsg
py reader /dev/$dev_a 25 /tmp/reader.log &
reader=$!
sleep 3
t0=$(cut -d' ' -f1 /proc/uptime)
sbps-reconcile --policy $P --output json --detailed-exitcode >$S/report2.json 2>$S/run2.stderr
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
cat $S/run2.stderr
echo "  run 2 took $(awk "BEGIN{print $t1 - $t0}") s"
for i in $(seq 1 30); do
    [ "$(session_state)" = LOGGED_IN ] && break
    sleep 1
done
echo "  session state after run 2: $(session_state)"
wait $reader
read -r gap read_errors <<<"$(py gap /tmp/reader.log)"
conn2=$(conn_errors_since E2E-MARKER-RUN2)
echo "  reads of the kept LUN: longest gap ${gap} s, ${read_errors} failed read(s); initiator connection errors: $conn2"
{
    echo "run2_session_gap_seconds=$gap"
    echo "run2_failed_reads=$read_errors"
    echo "run2_initiator_conn_errors=$conn2"
    echo "run2_duration_seconds=$(awk "BEGIN{print $t1 - $t0}")"
} >>$S/metrics.txt
check "run 2 exits 2 (changes applied)" [ $rc -eq 2 ]
py expect $S/report2.json 'r["applied"] is True' 'r["summary"]["add"] == 2' 'r["summary"]["remove"] == 2' \
    'r["summary"]["keep"] == 3' 'sorted(actions["add"]) == ["img-b", "img-d"]' \
    'sorted(p["source"] for p in r["projections"] if p["action"] == "remove") == ["s3://boot-images/img-b/rootfs", "s3://boot-images/img-c/rootfs"]' 'r["backup"] is not None' \
    'all(p["lun"] > 4 for p in r["projections"] if p["action"] == "add")' \
    || fail "run 2 report"
py kept $S/report1.json $S/report2.json || fail "kept LUNs keep their numbers and identities"
check "the session is logged in again" [ "$(session_state)" = LOGGED_IN ]

step "run 2: after a rescan the new LUNs are there and the removed ones gone"
iscsiadm -m session -R >/dev/null || fail "rescan"
udevadm settle -t 30
sleep 1
udevadm settle -t 30
want=$(py luns $S/report2.json)
# The first command after a LUN change meets a unit attention (REPORTED LUNS DATA HAS CHANGED).
for i in 1 2 3; do
    sg_luns --readonly /dev/$dev_a >/tmp/sg_luns.out 2>&1 && break
    sed 's/^/  sg_luns: /' /tmp/sg_luns.out
    sleep 1
done
got=$(python3 -c '
import re, sys
# Peripheral or flat addressing: the LUN is the low 14 bits of the first two bytes.
text = open(sys.argv[1]).read()
luns = sorted(int(h[:4], 16) & 0x3FFF for h in re.findall(r"^\s*([0-9a-f]{16})\b", text, re.M))
print(" ".join(map(str, luns)))' /tmp/sg_luns.out)
echo "  REPORT LUNS: $got (expected: $want)"
check "the target reports exactly the planned LUNs" [ "$got" = "$want" ]
py check $S/report2.json || fail "initiator view after run 2"

step "run 3: nothing changed"
calls_before=$(calls)
echo "E2E-MARKER-RUN3" >/dev/kmsg
sbps-reconcile --policy $P --output json --detailed-exitcode >$S/report3.json 2>$S/run3.stderr
rc=$?
cat $S/run3.stderr
sleep 3
check "run 3 exits 0 (no changes)" [ $rc -eq 0 ]
py expect $S/report3.json 'r["changed"] is False' 'r["applied"] is False' 'r["summary"]["keep"] == 5' \
    || fail "run 3 report"
check "run 3 called targetctl not at all" [ "$(calls)" = "$calls_before" ]
conn3=$(conn_errors_since E2E-MARKER-RUN3)
echo "run3_initiator_conn_errors=$conn3" >>$S/metrics.txt
check "the initiator logged no connection error in run 3" [ "$conn3" = 0 ]
check "the session is still logged in" [ "$(session_state)" = LOGGED_IN ]

step "kernel log (iSCSI)"
dmesg | grep -iE 'iscsi|conn error|target|sd [0-9]' | tail -40 | sed 's/^/    /'
echo "--- targetctl calls:"
sed 's/^/    /' $CALLS
iscsiadm -m node -u >/dev/null 2>&1
echo "RESULT: $RESULT" | tee $S/result.txt
