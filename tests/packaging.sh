#!/usr/bin/env bash
# Checks that need outside tools (installed by .ci/setup): systemd-analyze verify on both
# units, the RPM's file list and flags (rpm -qlp), and the Ansible playbook (syntax check,
# ansible-lint, and that the policy its template renders loads). Prints one line a check and
# "packaging: N passed, M failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
pass=0
fail=0
ok() { echo "packaging: ok   $*"; pass=$((pass + 1)); }
bad() { echo "packaging: FAIL $*"; fail=$((fail + 1)); }
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- RPM (builds the release binary the other checks use) ---------------------------------
if bash .ci/build-rpm >"$work/rpm.log" 2>&1; then
    ok "RPM built"
else
    bad "RPM built"
    tail -20 "$work/rpm.log"
fi
rpm=$(ls target/rpm/sbps-reconcile-*.rpm 2>/dev/null | head -1)
expected="/etc/sbps-reconcile/policy.yaml
/usr/bin/sbps-reconcile
/usr/lib/systemd/system/sbps-reconcile.service
/usr/lib/systemd/system/sbps-reconcile.timer
/usr/share/bash-completion/completions/sbps-reconcile
/usr/share/doc/sbps-reconcile/README.md
/usr/share/doc/sbps-reconcile/docs/how-it-works.md
/usr/share/doc/sbps-reconcile/docs/running.md
/usr/share/doc/sbps-reconcile/docs/testing.md
/usr/share/doc/sbps-reconcile/docs/troubleshooting.md
/usr/share/man/man5/sbps-reconcile.policy.5
/usr/share/man/man8/sbps-reconcile.8
/usr/share/zsh/site-functions/_sbps-reconcile"
if [ -n "$rpm" ]; then
    echo "packaging: $rpm:"
    rpm -qlp "$rpm" | sed 's/^/    /'
    check "RPM file list (rpm -qlp)" [ "$(rpm -qlp "$rpm" | LC_ALL=C sort)" = "$expected" ]
    # How sites inspect a package, and what some install tooling pipes through: each must
    # exit 0 (rpm2cpio of rpm >= 4.16 exits 1 when the signature header lacks the payload's
    # size, as the package of a Rust RPM writer did).
    check "rpm -K (digests)" rpm -K "$rpm"
    check "rpm -qlp exits 0" bash -c 'rpm -qlp "$1" >/dev/null' _ "$rpm"
    check "rpm2cpio | cpio -t exits 0 and lists every file" bash -c '
        set -o pipefail
        list=$(rpm2cpio "$1" | cpio -t --quiet) || exit 1
        [ "$(sed "s|^\\./|/|" <<<"$list" | LC_ALL=C sort)" = "$2" ]' _ "$rpm" "$expected"
    flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEMODES:perms}\n]' "$rpm")
    check "the policy is %config(noreplace), mode 0600" grep -qx '/etc/sbps-reconcile/policy.yaml cn -rw-------' <<<"$flags"
    check "the binary is executable" grep -qx '/usr/bin/sbps-reconcile  -rwxr-xr-x' <<<"$flags"
    check "the RPM requires targetctl" grep -qx '/usr/bin/targetctl' <<<"$(rpm -qpR "$rpm")"
else
    bad "no RPM to inspect"
fi

# --- systemd units -------------------------------------------------------------------------
root="$work/root"
mkdir -p "$root/usr/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a /lib/systemd/system "$root/usr/lib/systemd/"
cp target/release/sbps-reconcile /usr/bin/touch "$root/usr/bin/"
cp /bin/true "$root/bin/"
cp systemd/sbps-reconcile.service systemd/sbps-reconcile.timer "$root/etc/systemd/system/"
# target.service comes with targetcli-fb, which this machine does not have.
printf '[Unit]\nDescription=stand-in for targetcli-fb target.service\n[Service]\nType=oneshot\nExecStart=/bin/true\n' \
    >"$root/usr/lib/systemd/system/target.service"
check "systemd-analyze verify (service, timer)" \
    systemd-analyze verify --root="$root" --man=no sbps-reconcile.service sbps-reconcile.timer
echo "packaging: $(systemd-analyze security --offline=true systemd/sbps-reconcile.service 2>/dev/null | tail -1)"

# --- Ansible -------------------------------------------------------------------------------
venv=${SBPS_ANSIBLE_VENV:-target/ansible-venv}
export ANSIBLE_LOCAL_TEMP="$work/ansible-tmp" ANSIBLE_HOME="$work/ansible-home"
# quietly COMMAND...: runs it with its output in a file of its own, shown when it fails. A
# fresh file is blocking whatever an earlier program did to the inherited stdout (ansible
# refuses non-blocking standard streams).
quietly() {
    "$@" </dev/null >"$work/quiet.log" 2>&1 || { sed 's/^/    /' "$work/quiet.log"; return 1; }
}
# Not a subshell: a check's failure must reach the count.
pushd examples/ansible >/dev/null
    check "ansible-playbook --syntax-check" quietly "../../$venv/bin/ansible-playbook" --syntax-check -i localhost, playbook.yml
    check "ansible-lint (production profile)" quietly "../../$venv/bin/ansible-lint" --profile production -q playbook.yml
    # The template renders a policy the tool accepts (exit 1 for the unreachable catalogue
    # here, never 78 for a bad policy). Only 127.0.0.1 is named, so nothing leaves the host.
    "../../$venv/bin/ansible" localhost -c local -i localhost, -m ansible.builtin.template \
        -a "src=roles/sbps_reconcile/templates/policy.yaml.j2 dest=$work/policy.yaml" \
        -e "ansible_python_interpreter=$(cd "../../$venv" && pwd)/bin/python" \
        -e '{"sbps_reconcile_iqn": "iqn.2023-06.csm.iscsi:{hostname}", "sbps_reconcile_portals": ["127.0.0.1:3260"],
             "sbps_reconcile_portal_interfaces": [], "sbps_reconcile_max_lun": 255,
             "sbps_reconcile_mount": "/nonexistent", "sbps_reconcile_bucket": "boot-images",
             "sbps_reconcile_ims_url": "https://127.0.0.1:9/apis/ims/v3/images", "sbps_reconcile_ca_bundle": "",
             "sbps_reconcile_s3_endpoint": "http://127.0.0.1:9", "sbps_reconcile_pe_prefixes": ["PE/"],
             "sbps_reconcile_max_removals": 10, "sbps_reconcile_metrics_file": "/tmp/x.prom"}' </dev/null >"$work/ansible.log" 2>&1 \
        || cat "$work/ansible.log"
popd >/dev/null
target/release/sbps-reconcile --policy "$work/policy.yaml" --dry-run -q >/dev/null 2>"$work/render.err"
rc=$?
check "the policy the role renders loads (exit $rc, not 78)" [ -s "$work/policy.yaml" ] && [ "$rc" -ne 78 ]
[ "$rc" -eq 78 ] && cat "$work/render.err"

echo "packaging: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
