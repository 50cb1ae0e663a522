#!/usr/bin/env bash
# Instruction counts of the release binary, for a figure that does not move with the
# machine's load: an offline cold dry run and an offline no-op at 5,500 images (5,000 IMS
# images and 500 PE objects in a generated catalogue on disk), under valgrind's callgrind.
#   benches/callgrind.sh [IMAGES]      # default 5000 (+ a tenth as PE objects)
# Needs valgrind. Prints a Markdown table on stdout; a benchmark, not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-5000}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
cargo build --release --locked >&2
binary=$PWD/target/release/sbps-reconcile
work=$(mktemp -d /tmp/sbps-callgrind.XXXXXX)
# SBPS_KEEP=1 keeps the catalogue and callgrind's output (callgrind_annotate reads it).
[ -n "${SBPS_KEEP:-}" ] || trap 'rm -rf "$work"' EXIT

python3 - "$work" "$images" <<'PY'
import hashlib, json, os, sys
work, n = sys.argv[1], int(sys.argv[2])
bucket = os.path.join(work, "bucket")
records = []
for i in range(n):
    image_id = f"{i:08x}-{i % 65536:04x}-4000-8000-{i:012x}"
    folder = os.path.join(bucket, image_id)
    os.makedirs(folder)
    rootfs = f"rootfs of image {i}\n".encode() * 4
    etag = hashlib.md5(rootfs).hexdigest()
    def artifact(kind, name, tag):
        return {"type": kind, "md5": tag,
                "link": {"path": f"s3://boot-images/{image_id}/{name}", "etag": tag, "type": "s3"}}
    manifest = {"version": "1.0", "created": "2026-01-01 00:00:00", "artifacts": [
        artifact("application/vnd.cray.image.rootfs.squashfs", "rootfs", etag),
        artifact("application/vnd.cray.image.kernel", "kernel", "k" * 32),
        artifact("application/vnd.cray.image.initrd", "initrd", "i" * 32)]}
    for name, body in (("rootfs", rootfs), ("manifest.json", json.dumps(manifest).encode()),
                       ("kernel", b"kernel\n"), ("initrd", b"initrd\n")):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(body)
    records.append({"id": image_id, "name": f"compute-image-{i}", "created": "2026-01-01T00:00:00",
                    "arch": "x86_64", "metadata": {"sbps-project": "true"},
                    "link": {"path": f"s3://boot-images/{image_id}/manifest.json", "etag": "", "type": "s3"}})
os.makedirs(os.path.join(bucket, "PE"))
for i in range(n // 10):
    with open(os.path.join(bucket, "PE", f"pe-{i:05d}.x86_64.squashfs"), "wb") as f:
        f.write(f"pe {i}\n".encode() * 8)
with open(os.path.join(work, "images.json"), "w") as f:
    json.dump(records, f)
PY
mkdir -p "$work/bin" "$work/state" "$work/etc"
cp tests/stub/targetctl "$work/bin/targetctl"
cat >"$work/policy.yaml" <<YAML
target:
  iqn: "iqn.2023-06.csm.iscsi:bench-w001"
  portals: ["10.252.1.10:3260"]
  max_lun: 65535
lio:
  saveconfig: $work/etc/saveconfig.json
  targetctl: $work/bin/targetctl
  backup_dir: $work/etc/backup
  lock_file: $work/state/sbps-reconcile.lock
  targetcli_lock: ""
  apply: restore
  configfs: $work/no-configfs
  state_dir: $work/state
  ledger_file: $work/state/luns.json
catalogue:
  bucket: boot-images
  mount: $work/bucket
  require_mountpoint: false
  ims:
    file: $work/images.json
  pe:
    prefixes: ["PE/"]
safety:
  max_removals: 1000000
  min_kept_fraction: 0
YAML

# Instructions of one run of the binary (callgrind's total "Ir").
instructions() {
    local out="$work/callgrind.$1.out"
    shift
    valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" --policy "$work/policy.yaml" \
        --output json "$@" >/dev/null 2>"$work/valgrind.log" || true
    awk '/^summary:/ {print $2}' "$out"
}

cold=$(instructions cold --dry-run)
"$binary" --policy "$work/policy.yaml" --output json >/dev/null 2>&1   # apply (stand-in targetctl)
noop=$(instructions no-op)
[ -z "${SBPS_KEEP:-}" ] || echo "kept: $work" >&2
total=$((images + images / 10))
thousands() { sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta' <<<"$1"; }
echo "| run ($(thousands $total) images, offline) | instructions | per image |"
echo "|---|---:|---:|"
echo "| cold dry run | $(thousands "$cold") | $(thousands $((cold / total))) |"
echo "| no-op | $(thousands "$noop") | $(thousands $((noop / total))) |"
