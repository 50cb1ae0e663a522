#!/usr/bin/env python3
"""Helpers that run inside the e2e guest (Python 3, standard library only).

  e2e.py catalogue init MOUNT IMS_JSON     an offline catalogue: images with random content,
                                           PE files, one manifest without an etag
  e2e.py catalogue add MOUNT IMS_JSON ID MIB ETAG    one image added (or given a new etag)
  e2e.py catalogue remove MOUNT IMS_JSON ID          one image removed from IMS
  e2e.py catalogue many MOUNT IMS_JSON N KIB         N small images added
  e2e.py stats OUT                         "slowest_read longest_gap failed_reads reads"
  e2e.py managed SAVED FILE MOUNT IQN      the managed facts of two saveconfig files are equal
  e2e.py check REPORT_JSON                 every projection in the report, seen by the initiator
  e2e.py reader DEVICE SECONDS OUT         direct-I/O reads of DEVICE every 50 ms, logged to OUT
  e2e.py gap OUT                           the longest time without a successful read
  e2e.py expect REPORT_JSON EXPR...        each Python expression (r = the report) holds
  e2e.py kept REPORT1 REPORT2              projections of run 1 kept in a later run have their LUN and identity
  e2e.py luns REPORT_JSON                  the LUN numbers the report leaves in place
  e2e.py same REPORT1 REPORT2              every projection REPORT1 leaves in place is at the same LUN in REPORT2
  e2e.py moved REPORT1 REPORT2             how many projections of REPORT1 are at another LUN in REPORT2
"""
import hashlib
import json
import mmap
import os
import subprocess
import sys
import time

BUCKET = "boot-images"
ROOTFS = "application/vnd.cray.image.rootfs.squashfs"
MIB = 1024 * 1024


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def manifest(image_id, etag):
    link = {"path": f"s3://{BUCKET}/{image_id}/rootfs", "type": "s3"}
    if etag is not None:
        link["etag"] = etag
    return json.dumps({"version": "1.0", "created": "2025-03-04 10:11:12",
                       "artifacts": [{"type": ROOTFS, "md5": "", "link": link}]}).encode()


def add_image(mount, images, image_id, size, etag):
    write(f"{mount}/{image_id}/rootfs", os.urandom(size))
    write(f"{mount}/{image_id}/manifest.json", manifest(image_id, etag))
    images[:] = [r for r in images if r["id"] != image_id]
    images.append({"id": image_id, "name": f"e2e-{image_id}", "created": "2025-03-04T10:11:12",
                   "metadata": {"sbps-project": "true"},
                   "link": {"path": f"s3://{BUCKET}/{image_id}/manifest.json", "etag": "", "type": "s3"}})


def catalogue(action, mount, ims, *args):
    if action == "add":
        images = load(ims)
        add_image(mount, images, args[0], int(args[1]) * MIB, args[2])
    elif action == "remove":
        images = [r for r in load(ims) if r["id"] != args[0]]
    elif action == "many":
        images = load(ims)
        for i in range(int(args[0])):
            add_image(mount, images, f"img-many-{i:03d}", int(args[1]) * 1024, f"many{i:03d}")
    if action in ("add", "remove", "many"):
        with open(ims, "w") as f:
            json.dump(images, f, indent=2)
        return
    if action == "init":
        images = []
        add_image(mount, images, "img-a", 3 * MIB, "aaaa0001-3")
        add_image(mount, images, "img-b", 2 * MIB, "bbbb0001")
        add_image(mount, images, "img-c", 1 * MIB, "cccc0001-2")
        # The input that crashed the old agent: a manifest without an etag.
        add_image(mount, images, "img-broken", MIB, None)
        write(f"{mount}/PE/CPE-base.x86_64-24.11.squashfs", os.urandom(2 * MIB))
        write(f"{mount}/PE/CPE-extra.x86_64-24.11.squashfs", os.urandom(MIB))
    else:
        with open(ims) as f:
            images = json.load(f)
        add_image(mount, images, "img-d", 2 * MIB, "dddd0001")          # added
        images[:] = [r for r in images if r["id"] != "img-c"]          # removed
        add_image(mount, images, "img-b", 3 * MIB, "bbbb0002-4")       # new etag, new content
    with open(ims, "w") as f:
        json.dump(images, f, indent=2)


def sysfs(path):
    with open(path, "rb") as f:
        return f.read()


def devices_by_lun():
    found = {}
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith("sd"):
            continue
        hctl = os.path.basename(os.path.realpath(f"/sys/block/{name}/device"))
        found[int(hctl.rsplit(":", 1)[1])] = name
    return found


def sha256(path, size):
    digest = hashlib.sha256()
    flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)
    fd = os.open(path, flags)
    try:
        buf = mmap.mmap(-1, MIB)  # page-aligned, as O_DIRECT needs
        left = size
        while left > 0:
            n = os.readv(fd, [buf])
            if n <= 0:
                break
            take = min(n, left)
            digest.update(buf[:take])
            left -= take
    finally:
        os.close(fd)
    return digest.hexdigest()


def check(report_path):
    with open(report_path) as f:
        report = json.load(f)
    luns = devices_by_lun()
    bad = 0

    def result(ok, what):
        nonlocal bad
        bad += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")

    for p in report["projections"]:
        if p["action"] == "remove":
            continue
        lun, name, wwn = p["lun"], p["name"], p["wwn"]
        dev = luns.get(lun)
        result(dev is not None, f"LUN {lun} ({p['source']}) is a disk on the initiator: /dev/{dev}")
        if dev is None:
            continue
        serial = sysfs(f"/sys/block/{dev}/device/vpd_pg80")[4:].rstrip(b"\0").decode()
        result(serial == wwn, f"LUN {lun} VPD 0x80 unit serial {serial!r} == wwn {wwn!r}")
        model = sysfs(f"/sys/block/{dev}/device/model").decode().strip()
        result(model == name, f"LUN {lun} INQUIRY product ID {model!r} == name {name!r}")
        wwid = subprocess.run(["/lib/udev/scsi_id", "--whitelisted", f"--device=/dev/{dev}"],
                              capture_output=True, text=True).stdout.strip()
        want = "36001405" + wwn[:25]
        result(wwid == want, f"LUN {lun} udev WWID {wwid!r} == {want!r}")
        link = f"/dev/disk/by-id/wwn-0x6001405{wwn[:25]}"
        result(os.path.exists(link), f"LUN {lun} {link} exists")
        ro = sysfs(f"/sys/block/{dev}/ro").decode().strip()
        result(ro == "1", f"LUN {lun} is read-only (ro={ro})")
        size = p["size"]
        disk = sha256(f"/dev/{dev}", size)
        with open(p["dev"], "rb") as f:
            file = hashlib.sha256(f.read()).hexdigest()
        result(disk == file, f"LUN {lun} content sha256 {disk[:16]}.. == file {file[:16]}.. ({size} bytes)")
    return 1 if bad else 0


def reader(device, seconds, out):
    end = time.monotonic() + float(seconds)
    buf = mmap.mmap(-1, 4096)
    with open(out, "w") as log:
        while time.monotonic() < end:
            start = time.monotonic()
            ok = True
            try:
                fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
                try:
                    os.readv(fd, [buf])
                finally:
                    os.close(fd)
            except OSError as e:
                ok = False
                log.write(f"# {e}\n")
            done = time.monotonic()
            log.write(f"{start:.3f} {done:.3f} {'ok' if ok else 'err'}\n")
            log.flush()
            time.sleep(0.05)


def gap(out):
    last_ok, worst = None, 0.0
    errors = 0
    with open(out) as f:
        for line in f:
            if line.startswith("#"):
                continue
            start, done, status = line.split()
            if status == "ok":
                if last_ok is not None:
                    worst = max(worst, float(done) - last_ok)
                last_ok = float(done)
            else:
                errors += 1
    print(f"{worst:.2f} {errors}")


def load(path):
    with open(path) as f:
        return json.load(f)


def stats(out):
    """The slowest successful read, the longest time without one, failures, reads."""
    slowest, worst, last_ok, errors, reads = 0.0, 0.0, None, 0, 0
    with open(out) as f:
        for line in f:
            if line.startswith("#"):
                continue
            start, done, status = line.split()
            reads += 1
            if status != "ok":
                errors += 1
                continue
            slowest = max(slowest, float(done) - float(start))
            if last_ok is not None:
                worst = max(worst, float(done) - last_ok)
            last_ok = float(done)
    print(f"{slowest:.4f} {worst:.3f} {errors} {reads}")


def managed_view(config, mount, iqn):
    objects = {}
    for so in config.get("storage_objects", []):
        if so.get("plugin") == "fileio" and str(so.get("dev", "")).startswith(mount + "/"):
            objects[so["name"]] = (so.get("dev"), so.get("size"), so.get("wwn"), so.get("write_back"),
                                   so.get("attributes", {}).get("emulate_model_alias"))
    tpg = None
    for target in config.get("targets", []):
        if target.get("wwn", "").lower() == iqn.lower():
            tpg = next((t for t in target.get("tpgs", []) if t.get("tag") == 1), None)
    if tpg is None:
        return objects, None
    luns = {l["index"]: l["storage_object"] for l in tpg.get("luns", [])}
    portals = sorted((p["ip_address"], p["port"]) for p in tpg.get("portals", []))
    return objects, (tpg.get("enable", True), luns, portals, tpg.get("attributes", {}))


def managed(saved_path, file_path, mount, iqn):
    saved, file = load(saved_path), load(file_path)
    s_objects, s_tpg = managed_view(saved, mount, iqn)
    f_objects, f_tpg = managed_view(file, mount, iqn)
    bad = 0

    def result(ok, what):
        nonlocal bad
        bad += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")

    result(s_objects == f_objects, f"{len(f_objects)} storage objects: dev, size, wwn, write_back, model alias")
    for name in sorted(set(s_objects) ^ set(f_objects)):
        print(f"       only in {'the kernel' if name in s_objects else 'the file'}: {name}")
    for name in sorted(n for n in set(s_objects) & set(f_objects) if s_objects[n] != f_objects[n]):
        print(f"       {name}: kernel {s_objects[name]} file {f_objects[name]}")
    if s_tpg is None or f_tpg is None:
        result(False, "TPG 1 in both")
        return 1
    result(s_tpg[0] == f_tpg[0], f"TPG 1 enable {s_tpg[0]} == {f_tpg[0]}")
    result(s_tpg[1] == f_tpg[1], f"LUNs {sorted(s_tpg[1])} map the same objects")
    result(s_tpg[2] == f_tpg[2], f"portals {s_tpg[2]} == {f_tpg[2]}")
    attributes = {k: s_tpg[3].get(k) for k in f_tpg[3]}
    result(attributes == f_tpg[3], f"TPG 1 attributes {f_tpg[3]}")
    return 1 if bad else 0


def expect(report_path, expressions):
    r = load(report_path)
    skipped = {s["image_id"] or s["image_name"]: s["reason_code"] for s in r["skipped"]}
    actions = {}
    for p in r["projections"]:
        actions.setdefault(p["action"], []).append(p["image_id"] or p["image_name"])
    bad = 0
    for expression in expressions:
        try:
            ok = bool(eval(expression, {"r": r, "skipped": skipped, "actions": actions}))
        except Exception as e:  # a broken expression is a failed check
            ok = False
            expression += f"  ({e})"
        bad += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {expression}")
    return 1 if bad else 0


def kept(first_path, second_path):
    first = {p["name"]: p for p in load(first_path)["projections"]}
    bad = 0
    kept = [p for p in load(second_path)["projections"] if p["action"] == "keep" and p["name"] in first]
    for p in kept:
        before = first.get(p["name"])
        ok = before is not None and (before["lun"], before["wwn"]) == (p["lun"], p["wwn"])
        bad += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} kept {p['source']}: LUN {p['lun']} wwn {p['wwn']} as in run 1")
    if not kept:
        print("  FAIL nothing was kept")
        bad += 1
    return 1 if bad else 0


def in_place(report_path):
    return {p["name"]: p for p in load(report_path)["projections"] if p["action"] != "remove"}


def same(first_path, second_path):
    first, second = in_place(first_path), in_place(second_path)
    bad = 0
    for name, p in sorted(first.items(), key=lambda kv: kv[1]["lun"]):
        now = second.get(name)
        ok = now is not None and now["lun"] == p["lun"]
        bad += not ok
        where = f"LUN {now['lun']}" if now else "nowhere"
        print(f"  {'ok  ' if ok else 'FAIL'} {p['source']}: LUN {p['lun']} before, {where} now")
    if not first:
        print("  FAIL nothing in place")
        bad += 1
    return 1 if bad else 0


def moved(first_path, second_path):
    first, second = in_place(first_path), in_place(second_path)
    print(sum(1 for name, p in first.items() if name in second and second[name]["lun"] != p["lun"]))


def luns(report_path):
    print(" ".join(str(p["lun"]) for p in sorted(load(report_path)["projections"], key=lambda p: p["lun"])
                   if p["action"] != "remove"))


def main():
    args = sys.argv[1:]
    if args[:1] == ["catalogue"]:
        catalogue(*args[1:])
    elif args[:1] == ["stats"]:
        stats(args[1])
    elif args[:1] == ["managed"]:
        return managed(args[1], args[2], args[3], args[4])
    elif args[:1] == ["check"]:
        return check(args[1])
    elif args[:1] == ["reader"]:
        reader(args[1], args[2], args[3])
    elif args[:1] == ["gap"]:
        gap(args[1])
    elif args[:1] == ["expect"]:
        return expect(args[1], args[2:])
    elif args[:1] == ["kept"]:
        return kept(args[1], args[2])
    elif args[:1] == ["luns"]:
        luns(args[1])
    elif args[:1] == ["same"]:
        return same(args[1], args[2])
    elif args[:1] == ["moved"]:
        moved(args[1], args[2])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
