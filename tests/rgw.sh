#!/usr/bin/env bash
# A throwaway single-node Ceph RADOS Gateway on 127.0.0.1: the S3 server CSM runs (Debian's
# ceph-mon, ceph-osd on memstore and radosgw; no disk, no cephx, no mgr). Every daemon runs
# under `timeout`, so the cluster stops by itself even if nothing stops it.
#
#   tests/rgw.sh start DIR [LIFETIME_SECONDS]   start it; prints "endpoint http://127.0.0.1:PORT"
#   tests/rgw.sh stop DIR                       stop it and remove DIR
#
# Env: SBPS_RGW_PORT (default: a free port), SBPS_RGW_TCP_NODELAY (1 sets beast's
#      tcp_nodelay=1; the default 0 is beast's own), SBPS_RGW_ACCESS_KEY and
#      SBPS_RGW_SECRET_KEY (the user's keys; defaults are the ones the tests know).
# The endpoint, keys and PIDs are written to DIR/env (shell syntax) for other scripts.
set -euo pipefail

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

die() {
    echo "rgw: $*" >&2
    for f in "$D"/log/*.log; do
        [ -f "$f" ] || continue
        echo "--- $f (last 15 lines)" >&2
        tail -15 "$f" >&2
    done
    stop_all
    exit 1
}

stop_all() {
    if [ -f "$D/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$D/pids"
        while read -r pid; do
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        done <"$D/pids"
    fi
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
    local what=$1 limit=$2
    shift 2
    local i
    for i in $(seq 1 $((limit * 5))); do
        if "$@" </dev/null >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what not ready after $limit s"
}

cmd=${1:-}
D=${2:-}
[ -n "$cmd" ] && [ -n "$D" ] || { echo "usage: $0 start|stop DIR [LIFETIME_SECONDS]" >&2; exit 64; }

case $cmd in
stop)
    stop_all
    rm -rf "$D"
    exit 0
    ;;
start) ;;
*) echo "usage: $0 start|stop DIR [LIFETIME_SECONDS]" >&2; exit 64 ;;
esac

lifetime=${3:-3600}
for tool in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool; do
    command -v "$tool" >/dev/null || { echo "rgw: $tool is missing (run .ci/setup)" >&2; exit 1; }
done
rm -rf "$D"
mkdir -p "$D"/{mon,osd,run,log}
D=$(cd "$D" && pwd)
: >"$D/pids"
mon_port=$(free_port)
port=${SBPS_RGW_PORT:-$(free_port)}
access=${SBPS_RGW_ACCESS_KEY:-AKIDSBPSTEST}
secret=${SBPS_RGW_SECRET_KEY:-sbps-test-secret}
nodelay=${SBPS_RGW_TCP_NODELAY:-0}
fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')

cat >"$D/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
keyring = $D/keyring
run dir = $D/run
admin socket = $D/run/\$name.asok
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log
crash dir = $D/log
log to stderr = false
err to stderr = false
mon data = $D/mon
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd data = $D/osd
osd objectstore = memstore
memstore device bytes = 8589934592
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0

[client.rgw.test]
rgw frontends = beast endpoint=127.0.0.1:$port tcp_nodelay=$nodelay
rgw data = $D/rgw
# With authentication off, radosgw cannot reach the monitor without this
# (get_initial_auth_request returned -13).
ms mon client mode = crc
EOF
export CEPH_CONF=$D/ceph.conf

# spawn NAME COMMAND...: runs a daemon in the foreground of a background job, under timeout.
spawn() {
    local name=$1
    shift
    timeout "$lifetime" "$@" >"$D/log/$name.out" 2>&1 </dev/null &
    echo $! >>"$D/pids"
}

# Every command's output goes to a file: the ceph tools set O_NONBLOCK on the stdout and
# stderr they are given, and on an inherited pipe that outlives them (ansible then refuses
# to run: "Ansible requires blocking IO").
cli() { "$@" </dev/null >>"$D/log/cli.out" 2>&1; }
cli ceph-authtool --create-keyring "$D/keyring" --gen-key --name=mon. --cap mon 'allow *'
cli monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$D/monmap"
ceph-mon --id a --mkfs --monmap "$D/monmap" --keyring "$D/keyring" >"$D/log/mon-mkfs.out" 2>&1 ||
    die "ceph-mon --mkfs failed: $(cat "$D/log/mon-mkfs.out")"
spawn mon ceph-mon --id a -f
wait_for "monitor" 30 timeout 5 ceph mon stat

osd_id=$(timeout 30 ceph osd create </dev/null 2>>"$D/log/cli.out") || die "ceph osd create failed"
cli timeout 30 ceph osd crush add "osd.$osd_id" 1 root=default host=localhost
ceph-osd --id "$osd_id" --mkfs >"$D/log/osd-mkfs.out" 2>&1 ||
    die "ceph-osd --mkfs failed: $(cat "$D/log/osd-mkfs.out")"
spawn osd ceph-osd --id "$osd_id" -f
osd_up() { timeout 5 ceph osd dump </dev/null 2>/dev/null | grep -q "^osd.$osd_id up"; }
wait_for "OSD" 60 osd_up

spawn rgw radosgw -n client.rgw.test -f
rgw_up() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')"; }
wait_for "radosgw on 127.0.0.1:$port" 90 rgw_up
timeout 60 radosgw-admin -n client.rgw.test user create --uid sbps-test --display-name "sbps-reconcile tests" \
    --access-key "$access" --secret-key "$secret" </dev/null >"$D/log/user.out" 2>&1 ||
    die "radosgw-admin user create failed: $(cat "$D/log/user.out")"

cat >"$D/env" <<EOF
RGW_ENDPOINT=http://127.0.0.1:$port
RGW_ACCESS_KEY=$access
RGW_SECRET_KEY=$secret
RGW_LOG=$D/log/client.rgw.test.log
CEPH_CONF=$D/ceph.conf
EOF
echo "endpoint http://127.0.0.1:$port"
