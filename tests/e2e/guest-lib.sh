# Sourced by the scripts that run inside the e2e guest (guest.sh, systemd-guest.sh), from
# the share S (/mnt/share): results (failures.txt, metrics.txt) and the checks' vocabulary.
RESULT=PASS
: >$S/failures.txt
: >$S/metrics.txt
step() { echo; echo "##### [uptime $(cut -d' ' -f1 /proc/uptime)s] $*"; }
ok() { echo "  ok   $*"; }
fail() { echo "  FAIL $*"; echo "$*" >>$S/failures.txt; RESULT=FAIL; }
check() { if "${@:2}"; then ok "$1"; else fail "$1"; fi; }
metric() { echo "$1=$2" >>$S/metrics.txt; echo "  metric $1=$2"; }
py() { python3 $S/e2e.py "$@"; }
now() { cut -d' ' -f1 /proc/uptime; }
