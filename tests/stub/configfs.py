#!/usr/bin/env python3
"""Stand-in for LIO's configfs tree (/sys/kernel/config/target) in tests: these machines have
no LIO, so this FUSE file system plays the kernel's part, with the behaviour observed on a
real kernel (Debian 6.1, see tests/e2e/):

- mkdir of a storage object, a target, a TPG or a LUN creates its attribute files and groups;
- `control` is write-only; `info` is generated (`File: ...  Size: ...`); `enable` needs a file
  name and a size, and creates a missing backing file empty, as the kernel does;
- `attrib/emulate_model_alias` and `wwn/vpd_unit_serial` refuse writes once the object is
  exported by a LUN; an exported object cannot be removed (EBUSY), a LUN with its link
  cannot be removed (ENOTEMPTY), nor a TPG with portals or LUNs;
- a LUN's link must point at an enabled storage object.

Usage: configfs.py MOUNTPOINT STATE_DIR
STATE_DIR/ops.log gets one line per change (mkdir, rmdir, write, symlink, unlink), paths
relative to the mount. Files in STATE_DIR switch failures on, one rule per line:
  fail      "OP PATH-GLOB ERRNO-NAME [NTH]": the NTH (default every) matching change fails
  hang      "OP PATH-GLOB": the matching change blocks until the file is removed
"""
import errno
import fnmatch
import os
import re
import stat
import sys
import threading
import time

import mfusepy as fuse

STATE = None
LOCK = threading.Lock()
COUNTS = {}

DEVICE_ATTRIBUTES = {
    "alua_support": 1, "block_size": 512, "emulate_3pc": 1, "emulate_caw": 1,
    "emulate_dpo": 1, "emulate_fua_read": 1, "emulate_fua_write": 1,
    "emulate_model_alias": 0, "emulate_pr": 1, "emulate_rest_reord": 0, "emulate_tas": 1,
    "emulate_tpu": 0, "emulate_tpws": 0, "emulate_ua_intlck_ctrl": 0,
    "emulate_write_cache": 0, "enforce_pr_isids": 1, "force_pr_aptpl": 0, "is_nonrot": 0,
    "max_unmap_block_desc_count": 1, "max_unmap_lba_count": 8192,
    "max_write_same_len": 4096, "optimal_sectors": 16384, "pgr_support": 1,
    "pi_prot_format": 0, "pi_prot_type": 0, "pi_prot_verify": 0, "queue_depth": 128,
    "unmap_granularity": 1, "unmap_granularity_alignment": 0, "unmap_zeroes_data": 0,
}
TPG_ATTRIBUTES = {
    "authentication": 1, "cache_dynamic_acls": 0, "default_cmdsn_depth": 64,
    "default_erl": 0, "demo_mode_discovery": 1, "demo_mode_write_protect": 1,
    "fabric_prot_type": 0, "generate_node_acls": 0, "login_keys_workaround": 1,
    "login_timeout": 15, "netif_timeout": 2, "prod_mode_write_protect": 0, "t10_pi": 0,
    "tpg_enabled_sendtargets": 1,
}


def oserror(code):
    return fuse.FuseOSError(code)


class Device:
    """A storage object: its configuration and how many LUNs export it."""

    def __init__(self):
        self.params = {}
        self.enabled = False
        self.udev_path = ""
        self.serial = ""
        self.exports = 0
        self.attributes = dict(DEVICE_ATTRIBUTES)


class Node:
    def __init__(self, kind, mode, read=None, write=None, target=None):
        self.kind = kind  # "dir", "file" or "link"
        self.mode = mode
        self.read = read
        self.write = write
        self.target = target


class Tree:
    def __init__(self):
        self.nodes = {}
        self.devices = {}  # "core/fileio_0/name" -> Device
        self.tpg_enable = {}
        self.tpg_attributes = {}
        self.mkdir_plain("")
        self.mkdir_plain("core")
        self.mkdir_plain("core/alua")
        self.value_file("dbroot", lambda: "/etc/target\n")
        self.value_file("version", lambda: "Target Engine Core ConfigFS Infrastructure (stand-in)\n")

    # --- building blocks -------------------------------------------------------------
    def mkdir_plain(self, path):
        self.nodes[path] = Node("dir", 0o755)

    def value_file(self, path, read, write=None, mode=None):
        if mode is None:
            mode = 0o644 if write else 0o444
        self.nodes[path] = Node("file", mode, read=read, write=write)

    def children(self, path):
        prefix = path + "/" if path else ""
        return [p[len(prefix):] for p in self.nodes
                if p.startswith(prefix) and p != path and "/" not in p[len(prefix):]]

    def remove_tree(self, path):
        for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
            del self.nodes[p]

    # --- what mkdir creates ----------------------------------------------------------
    def mkdir(self, path):
        parts = path.split("/")
        parent = "/".join(parts[:-1])
        name = parts[-1]
        if path in self.nodes:
            raise oserror(errno.EEXIST)
        if parent not in self.nodes or self.nodes[parent].kind != "dir":
            raise oserror(errno.ENOENT)
        if parts == ["iscsi"]:
            self.mkdir_plain("iscsi")
            self.mkdir_plain("iscsi/discovery_auth")
            self.value_file("iscsi/lio_version", lambda: "Datera Inc. iSCSI Target (stand-in)\n")
            return
        if len(parts) == 2 and parts[0] == "core":
            if not re.fullmatch(r"(fileio|iblock|rd_mcp|pscsi|user)_\d+", name):
                raise oserror(errno.EINVAL)
            self.mkdir_plain(path)
            self.value_file(path + "/hba_info", lambda: "HBA Index: 1 plugin: fileio version: v5.0\n")
            self.value_file(path + "/hba_mode", lambda: "0\n", write=lambda v: None)
            return
        if len(parts) == 3 and parts[0] == "core":
            self.make_device(path)
            return
        if len(parts) == 2 and parts[0] == "iscsi":
            if not re.fullmatch(r"(iqn\.|eui\.|naa\.)[a-z0-9.:-]+", name):
                raise oserror(errno.EINVAL)
            self.mkdir_plain(path)
            self.mkdir_plain(path + "/fabric_statistics")
            self.mkdir_plain(path + "/param")
            return
        if len(parts) == 3 and parts[0] == "iscsi" and re.fullmatch(r"tpgt_\d+", name):
            self.make_tpg(path)
            return
        if len(parts) == 5 and parts[0] == "iscsi" and parts[3] == "np":
            if not re.fullmatch(r"(\d+\.\d+\.\d+\.\d+|\[[0-9a-fA-F:.]+\]):\d+", name):
                raise oserror(errno.EINVAL)
            self.mkdir_plain(path)
            return
        if len(parts) == 5 and parts[0] == "iscsi" and parts[3] == "lun":
            match = re.fullmatch(r"lun_(\d+)", name)
            if not match or int(match.group(1)) > 65535:
                raise oserror(errno.EINVAL)
            self.mkdir_plain(path)
            for f in ("alua_tg_pt_gp", "alua_tg_pt_offline", "alua_tg_pt_status", "alua_tg_pt_write_md"):
                self.value_file(f"{path}/{f}", lambda: "0\n", write=lambda v: None)
            self.mkdir_plain(path + "/statistics")
            return
        raise oserror(errno.EPERM)

    def make_device(self, path):
        device = Device()
        self.devices[path] = device
        self.mkdir_plain(path)
        for d in ("action", "alua", "alua/default_tg_pt_gp", "pr", "statistics", "attrib", "wwn"):
            self.mkdir_plain(f"{path}/{d}")

        def control(value):
            if device.enabled:
                raise oserror(errno.EEXIST)
            for item in value.strip().split(","):
                key, _, val = item.partition("=")
                if key not in ("fd_dev_name", "fd_dev_size", "fd_buffered_io", "fd_async_io"):
                    raise oserror(errno.EINVAL)
                device.params[key] = val

        def enable(value):
            if value.strip() != "1":
                raise oserror(errno.EINVAL)
            name = device.params.get("fd_dev_name")
            if not name or "fd_dev_size" not in device.params:
                raise oserror(errno.EINVAL)
            if not os.path.exists(name):
                # The kernel opens the file with O_CREAT: a missing file becomes an empty one.
                open(name, "a").close()
                os.chmod(name, 0o600)
            device.enabled = True

        def udev(value):
            device.udev_path = value.rstrip("\n")

        def serial(value):
            if device.exports:
                raise oserror(errno.EINVAL)
            device.serial = value.strip()

        def info():
            status = "ACTIVATED" if device.exports else "DEACTIVATED"
            size = device.params.get("fd_dev_size", "0") if device.enabled else "0"
            sector = 512 if device.enabled else 0
            return (f"Status: {status}  Max Queue Depth: 0  SectorSize: {sector}  HwMaxSectors: 16384\n"
                    f"        TCM FILEIO ID: 0        File: {device.params.get('fd_dev_name', '')}  "
                    f"Size: {size}  Mode: O_DSYNC Async: 0\n")

        self.value_file(path + "/control", None, write=control, mode=0o200)
        self.value_file(path + "/enable", lambda: f"{int(device.enabled)}\n", write=enable)
        self.value_file(path + "/udev_path", lambda: device.udev_path + ("\n" if device.udev_path else ""), write=udev)
        self.value_file(path + "/info", info)
        self.value_file(path + "/alias", lambda: "\n", write=lambda v: None)
        self.value_file(path + "/wwn/vpd_unit_serial",
                        lambda: f"T10 VPD Unit Serial Number: {device.serial}\n", write=serial)
        for key in device.attributes:
            self.value_file(f"{path}/attrib/{key}", self.device_attribute_reader(device, key),
                            write=self.device_attribute_writer(device, key))

    @staticmethod
    def device_attribute_reader(device, key):
        return lambda: f"{device.attributes[key]}\n"

    @staticmethod
    def device_attribute_writer(device, key):
        def write(value):
            value = value.strip()
            if value not in ("0", "1") and key in ("emulate_model_alias", "emulate_write_cache"):
                raise oserror(errno.EINVAL)
            if key == "emulate_model_alias" and device.exports:
                raise oserror(errno.EINVAL)
            device.attributes[key] = int(value)
        return write

    def make_tpg(self, path):
        self.mkdir_plain(path)
        for d in ("acls", "attrib", "auth", "lun", "np", "param"):
            self.mkdir_plain(f"{path}/{d}")
        self.tpg_enable[path] = 0
        attributes = dict(TPG_ATTRIBUTES)
        self.tpg_attributes[path] = attributes

        def enable(value):
            if value.strip() not in ("0", "1"):
                raise oserror(errno.EINVAL)
            self.tpg_enable[path] = int(value.strip())

        self.value_file(path + "/enable", lambda: f"{self.tpg_enable[path]}\n", write=enable)
        self.value_file(path + "/dynamic_sessions", lambda: "")
        for key in attributes:
            self.value_file(f"{path}/attrib/{key}", self.tpg_attribute_reader(attributes, key),
                            write=self.tpg_attribute_writer(attributes, key))

    @staticmethod
    def tpg_attribute_reader(attributes, key):
        return lambda: f"{attributes[key]}\n"

    @staticmethod
    def tpg_attribute_writer(attributes, key):
        def write(value):
            if not value.strip().isdigit():
                raise oserror(errno.EINVAL)
            attributes[key] = int(value.strip())
        return write

    # --- removal and links -----------------------------------------------------------
    def rmdir(self, path):
        node = self.nodes.get(path)
        if node is None:
            raise oserror(errno.ENOENT)
        parts = path.split("/")
        if path in self.devices:
            if self.devices[path].exports:
                raise oserror(errno.EBUSY)
            del self.devices[path]
        elif len(parts) == 2 and parts[0] == "core":
            if any(c not in ("hba_info", "hba_mode") for c in self.children(path)):
                raise oserror(errno.ENOTEMPTY)
        elif len(parts) == 5 and parts[3] == "lun":
            if any(self.nodes[f"{path}/{c}"].kind == "link" for c in self.children(path)):
                raise oserror(errno.ENOTEMPTY)
        elif len(parts) == 3 and parts[0] == "iscsi":
            if any(self.children(f"{path}/{d}") for d in ("lun", "np", "acls")):
                raise oserror(errno.ENOTEMPTY)
            self.tpg_enable.pop(path, None)
            self.tpg_attributes.pop(path, None)
        elif len(parts) == 2 and parts[0] == "iscsi":
            if any(c.startswith("tpgt_") for c in self.children(path)):
                raise oserror(errno.ENOTEMPTY)
        elif len(parts) == 5 and parts[3] == "np":
            pass
        else:
            raise oserror(errno.EPERM)
        self.remove_tree(path)

    def symlink(self, path, target, mountpoint):
        parts = path.split("/")
        if not (len(parts) == 6 and parts[0] == "iscsi" and parts[3] == "lun"):
            raise oserror(errno.EPERM)
        lun = "/".join(parts[:5])
        if lun not in self.nodes:
            raise oserror(errno.ENOENT)
        if any(self.nodes[f"{lun}/{c}"].kind == "link" for c in self.children(lun)):
            raise oserror(errno.EEXIST)
        resolved = os.path.normpath(os.path.join(mountpoint, lun, target)) if not target.startswith("/") else target
        rel = os.path.relpath(resolved, mountpoint)
        device = self.devices.get(rel)
        if device is None:
            raise oserror(errno.EINVAL)
        if not device.enabled:
            raise oserror(errno.ENODEV)
        device.exports += 1
        # The kernel shows links relative to the link's own directory.
        self.nodes[path] = Node("link", 0o777, target="../../../../../../target/" + rel)

    def unlink(self, path):
        node = self.nodes.get(path)
        if node is None:
            raise oserror(errno.ENOENT)
        if node.kind != "link":
            raise oserror(errno.EPERM)
        rel = node.target.split("/target/", 1)[1]
        if rel in self.devices:
            self.devices[rel].exports -= 1
        del self.nodes[path]


def switch_rules(name):
    try:
        with open(os.path.join(STATE, name)) as f:
            return [line.split() for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def log_op(op, path):
    with open(os.path.join(STATE, "ops.log"), "a") as f:
        f.write(f"{op} {path}\n")


def check_switches(op, path):
    """Fails or blocks a change when a switch file says so."""
    for rule in switch_rules("hang"):
        if len(rule) >= 2 and rule[0] == op and fnmatch.fnmatch(path, rule[1]):
            while os.path.exists(os.path.join(STATE, "hang")):
                time.sleep(0.05)
    for rule in switch_rules("fail"):
        if len(rule) >= 3 and rule[0] == op and fnmatch.fnmatch(path, rule[1]):
            key = " ".join(rule)
            COUNTS[key] = COUNTS.get(key, 0) + 1
            if len(rule) == 3 or int(rule[3]) == COUNTS[key]:
                raise oserror(getattr(errno, rule[2]))


class ConfigFs(fuse.Operations):
    use_ns = True

    def __init__(self, mountpoint):
        self.tree = Tree()
        self.mountpoint = os.path.abspath(mountpoint)

    @staticmethod
    def rel(path):
        return path.strip("/")

    def getattr(self, path, fh=None):
        with LOCK:
            node = self.tree.nodes.get(self.rel(path))
            if node is None:
                raise oserror(errno.ENOENT)
            if node.kind == "dir":
                return dict(st_mode=stat.S_IFDIR | node.mode, st_nlink=2)
            if node.kind == "link":
                return dict(st_mode=stat.S_IFLNK | 0o777, st_nlink=1, st_size=len(node.target))
            return dict(st_mode=stat.S_IFREG | node.mode, st_nlink=1, st_size=4096)

    def readdir(self, path, fh):
        with LOCK:
            return [".", ".."] + sorted(self.tree.children(self.rel(path)))

    def readlink(self, path):
        with LOCK:
            node = self.tree.nodes.get(self.rel(path))
            if node is None or node.kind != "link":
                raise oserror(errno.EINVAL)
            return node.target

    def mkdir(self, path, mode):
        rel = self.rel(path)
        check_switches("mkdir", rel)
        with LOCK:
            self.tree.mkdir(rel)
            log_op("mkdir", rel)

    def rmdir(self, path):
        rel = self.rel(path)
        check_switches("rmdir", rel)
        with LOCK:
            self.tree.rmdir(rel)
            log_op("rmdir", rel)

    def symlink(self, target, source):
        rel = self.rel(target)
        check_switches("symlink", rel)
        with LOCK:
            self.tree.symlink(rel, source, self.mountpoint)
            log_op("symlink", rel)

    def unlink(self, path):
        rel = self.rel(path)
        check_switches("unlink", rel)
        with LOCK:
            self.tree.unlink(rel)
            log_op("unlink", rel)

    def create(self, path, mode, fi=None):
        raise oserror(errno.EACCES)

    def open(self, path, flags):
        with LOCK:
            node = self.tree.nodes.get(self.rel(path))
            if node is None or node.kind != "file":
                raise oserror(errno.ENOENT)
            if (flags & os.O_ACCMODE) in (os.O_RDONLY, os.O_RDWR) and node.read is None:
                raise oserror(errno.EACCES)
            if (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR) and node.write is None:
                raise oserror(errno.EACCES)
            return 0

    def read(self, path, size, offset, fh):
        with LOCK:
            node = self.tree.nodes.get(self.rel(path))
            if node is None or node.read is None:
                raise oserror(errno.EACCES)
            return node.read().encode()[offset:offset + size]

    def write(self, path, data, offset, fh):
        # Rules are checked outside the lock so that a hanging write does not stop readers.
        rel = self.rel(path)
        check_switches("write", rel)
        with LOCK:
            node = self.tree.nodes.get(rel)
            if node is None or node.write is None:
                raise oserror(errno.EACCES)
            node.write(data.decode(errors="replace"))
            log_op("write", f"{rel} {data.decode(errors='replace').strip()}")
            return len(data)

    def truncate(self, path, length, fh=None):
        return 0


def main():
    global STATE
    mountpoint, STATE = sys.argv[1], sys.argv[2]
    os.makedirs(STATE, exist_ok=True)
    fuse.FUSE(ConfigFs(mountpoint), mountpoint, foreground=True, nothreads=False,
              allow_other=False, default_permissions=False)


if __name__ == "__main__":
    main()
