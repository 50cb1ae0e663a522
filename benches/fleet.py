#!/usr/bin/env python3
"""Fleet benchmark: the release binary against a catalogue of N images on loopback.

Run it with benches/fleet.sh (which installs what it needs and builds the binary). For each
N and each S3 server asked for (--servers: Ceph RGW as CSM runs it, with beast's default
tcp_nodelay=0 and with tcp_nodelay=1, and moto) it fills the server with N IMS images (manifest, rootfs, kernel and initrd
each, as a real bucket holds them) and N/10 PE objects, serves the IMS answer from an
IMS-shaped HTTP server, mirrors the files into a mount directory, and times these runs of
the binary (stand-in targetctl, restore mode):

  cold dry run   no saveconfig.json, no cache, no ledger
  cold apply     the same, applied
  no-op          nothing changed since the last run
  1% changed     N/100 new images since the last run, applied
  full verify    nothing changed, but the whole bucket verified (verify_interval: 0)

For each: the median wall time of RUNS runs (min and max beside it), the peak RSS, the
requests by kind (IMS GETs; S3 listing pages, GETs and PUTs, from the S3 server's own
log: RGW's access lines or moto's), the targetctl calls, and the ratio to the full-listing floor: one IMS GET and every
listing page of the bucket by a minimal client (urllib, no SDK), timed in the same run.

Prints one Markdown table per N. A benchmark, not a test: it asserts nothing.
"""
import argparse
import hashlib
import http.server
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

BUCKET = "boot-images"
IQN = "iqn.2023-06.csm.iscsi:bench-w001"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTFS = "application/vnd.cray.image.rootfs.squashfs"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto_server on a free port, logging every request to a file we can count."""

    name = "moto 5.2.5"
    access_key, secret_key = "AKIDBENCH", "bench-secret"

    def __init__(self, venv, workdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "moto.log")
        self.log = open(self.log_path, "w")
        # It stops by itself after two hours, whatever happens to this script.
        self.process = subprocess.Popen(
            ["timeout", "7200", os.path.join(venv, "bin", "moto_server"), "-H", "127.0.0.1",
             "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("moto_server did not start")

    def mark(self):
        self.log.flush()
        return os.path.getsize(self.log_path)

    def requests_since(self, mark):
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        found = {"list": 0, "get": 0, "put": 0, "settings": 0}
        for method, target in re.findall(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP', text):
            if f"/{BUCKET}" not in target:
                continue
            if method == "GET" and "list-type=2" in target:
                found["list"] += 1
            elif method == "GET" and re.match(rf"/{BUCKET}/?\?", target):
                # The bucket's own settings (whether it keeps versions, asked before a
                # ledger write), not an object.
                found["settings"] += 1
            elif method == "GET":
                found["get"] += 1
            elif method == "PUT":
                found["put"] += 1
        return found

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)

    def make_public(self, s3):
        """moto lists without a signature anyway."""


class Rgw(Moto):
    """A single-node Ceph RGW (tests/rgw.sh), counted from its own access log."""

    access_key, secret_key = "AKIDSBPSTEST", "sbps-test-secret"

    def __init__(self, workdir, nodelay):
        self.dir = os.path.join(workdir, "rgw")
        version = subprocess.run(["radosgw", "--version"], capture_output=True, text=True).stdout.split()
        self.name = f"Ceph RGW {version[2] if len(version) > 2 else '?'}, tcp_nodelay={nodelay}"
        env = dict(os.environ, SBPS_RGW_TCP_NODELAY=str(nodelay))
        # It stops by itself after two hours, whatever happens to this script.
        subprocess.run(["bash", os.path.join(ROOT, "tests/rgw.sh"), "start", self.dir, "7200"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        values = dict(line.split("=", 1) for line in open(os.path.join(self.dir, "env")).read().split())
        self.url = values["RGW_ENDPOINT"]
        self.log_path = values["RGW_LOG"]
        self.log = open(os.devnull, "w")

    def mark(self):
        return os.path.getsize(self.log_path)

    def stop(self):
        subprocess.run(["bash", os.path.join(ROOT, "tests/rgw.sh"), "stop", self.dir], check=False)

    def make_public(self, s3):
        """The floor's minimal client lists unsigned: let anyone list and read."""
        s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))


class Ims(http.server.ThreadingHTTPServer):
    """Answers GET /apis/ims/v3/images with the catalogue's records; counts requests."""

    daemon_threads = True

    def __init__(self):
        self.body = b"[]"
        self.count = 0
        super().__init__(("127.0.0.1", 0), ImsHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/apis/ims/v3/images"


class ImsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.count += 1
        body = self.server.body if self.path == "/apis/ims/v3/images" else b"{}"
        self.send_response(200 if self.path == "/apis/ims/v3/images" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Fleet:
    """One worker's view: the bucket, IMS, the mount, and the binary's files."""

    def __init__(self, workdir, moto, ims, binary):
        import boto3
        from botocore.config import Config
        self.dir, self.moto, self.ims, self.binary = workdir, moto, ims, binary
        self.s3 = boto3.client(
            "s3", endpoint_url=moto.url, region_name="us-east-1",
            aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key,
            config=Config(max_pool_connections=32, retries={"max_attempts": 5},
                          s3={"addressing_style": "path"}))
        self.s3.create_bucket(Bucket=BUCKET)
        moto.make_public(self.s3)
        self.records = []
        self.mount = os.path.join(workdir, "mount")
        os.makedirs(self.mount)
        for sub in ("etc/target", "bin", "run", "state"):
            os.makedirs(os.path.join(workdir, sub))
        shutil.copy(os.path.join(ROOT, "tests/stub/targetctl"), os.path.join(workdir, "bin/targetctl"))
        with open(os.path.join(workdir, "s3.creds"), "w") as f:
            f.write(f"{moto.access_key}:{moto.secret_key}\n")
        os.chmod(os.path.join(workdir, "s3.creds"), 0o600)
        self.next_image = 0

    def policy(self, verify_interval="1h"):
        d = self.dir
        path = os.path.join(d, f"policy-{verify_interval}.yaml")
        with open(path, "w") as f:
            f.write(f"""target:
  iqn: "{IQN}"
  portals: ["10.252.1.10:3260"]
  max_lun: 65535
lio:
  saveconfig: {d}/etc/target/saveconfig.json
  targetctl: {d}/bin/targetctl
  backup_dir: {d}/etc/target/backup
  lock_file: {d}/run/sbps-reconcile.lock
  targetcli_lock: ""
  apply: restore
  configfs: {d}/no-configfs
  state_dir: {d}/state
catalogue:
  bucket: {BUCKET}
  mount: {self.mount}
  require_mountpoint: false
  ims:
    url: {self.ims.url}
    auth: none
  s3:
    endpoint: {self.moto.url}
    credentials_file: {d}/s3.creds
    cache_dir: {d}/cache
    verify_interval: {verify_interval}
safety:
  max_removals: 1000000
  min_kept_fraction: 0
""")
        return path

    def put(self, key, body):
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        path = os.path.join(self.mount, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(body)

    def add_images(self, count, pool):
        """`count` new IMS images: manifest, rootfs, kernel, initrd; listed in IMS."""
        jobs = []
        for _ in range(count):
            i = self.next_image
            self.next_image += 1
            image_id = f"{i:08x}-{i % 65536:04x}-4000-8000-{i:012x}"
            rootfs = f"rootfs of image {i}\n".encode() * 4
            etag = hashlib.md5(rootfs).hexdigest()
            artifact = lambda kind, name, tag: {
                "type": kind, "md5": tag,
                "link": {"path": f"s3://{BUCKET}/{image_id}/{name}", "etag": tag, "type": "s3"}}
            manifest = json.dumps({"version": "1.0", "created": "2026-01-01 00:00:00", "artifacts": [
                artifact(ROOTFS, "rootfs", etag),
                artifact("application/vnd.cray.image.kernel", "kernel", "k" * 32),
                artifact("application/vnd.cray.image.initrd", "initrd", "i" * 32)]}).encode()
            for key, body in ((f"{image_id}/rootfs", rootfs), (f"{image_id}/manifest.json", manifest),
                              (f"{image_id}/kernel", b"kernel\n"), (f"{image_id}/initrd", b"initrd\n")):
                jobs.append(pool.submit(self.put, key, body))
            self.records.append({
                "id": image_id, "name": f"compute-image-{i}", "created": "2026-01-01T00:00:00",
                "arch": "x86_64", "metadata": {"sbps-project": "true"},
                "link": {"path": f"s3://{BUCKET}/{image_id}/manifest.json", "etag": "", "type": "s3"}})
        for job in jobs:
            job.result()
        self.ims.body = json.dumps(self.records).encode()

    def add_pe(self, count, pool):
        jobs = [pool.submit(self.put, f"PE/pe-{i:05d}.x86_64.squashfs", f"pe {i}\n".encode() * 8)
                for i in range(count)]
        for job in jobs:
            job.result()

    def reset(self):
        """A worker that never ran: no configuration, cache, state or ledger."""
        for path in ("etc/target", "cache", "state"):
            shutil.rmtree(os.path.join(self.dir, path), ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "etc/target"))
        for name in ("kernel.json", "calls.log"):
            try:
                os.remove(os.path.join(self.dir, "bin", name))
            except FileNotFoundError:
                pass
        self.s3.delete_object(Bucket=BUCKET, Key=f"sbps-reconcile/luns/{IQN}.json")

    def calls(self):
        try:
            with open(os.path.join(self.dir, "bin/calls.log")) as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def run(self, policy, *args):
        """One run of the binary: (wall seconds, peak RSS bytes, exit code, requests)."""
        mark, ims_before, calls_before = self.moto.mark(), self.ims.count, self.calls()
        rss = os.path.join(self.dir, "rss")
        # GNU time starts the binary from a small process: the peak RSS is the binary's
        # own (a child forked from this Python process would count its pages too).
        start = time.monotonic()
        process = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss, self.binary, "--policy", policy,
             "--output", "json", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
        wall = time.monotonic() - start
        if process.returncode != 0:
            sys.stderr.write(process.stderr.decode(errors="replace")[-2000:])
            raise SystemExit(f"the binary exited {process.returncode}")
        with open(rss) as f:
            peak = int(f.read().split()[-1]) * 1024
        requests = self.moto.requests_since(mark)
        requests["ims"] = self.ims.count - ims_before
        requests["targetctl"] = self.calls() - calls_before
        return wall, peak, requests


def floor(moto_url, ims_url):
    """One IMS GET and every listing page of the bucket, by a minimal client (plain HTTP
    and a regular expression for the continuation token; moto lists without a signature)."""
    start = time.monotonic()
    urllib.request.urlopen(ims_url).read()
    token, pages = None, 0
    while True:
        query = "list-type=2&max-keys=1000"
        if token:
            query += "&continuation-token=" + urllib.parse.quote(token, safe="")
        page = urllib.request.urlopen(f"{moto_url}/{BUCKET}?{query}").read().decode()
        pages += 1
        found = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", page)
        token = found.group(1) if found else None
        if "<IsTruncated>true</IsTruncated>" not in page or not token:
            break
    return time.monotonic() - start, pages


def get_floor(s3, keys, threads):
    """GETs of `keys`, `threads` at a time, by a minimal client: what the server can do."""
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), keys):
            pass
    return time.monotonic() - start


def measure(name, runs, before, fleet, policy, *args):
    walls, peaks, requests = [], [], None
    for _ in range(runs):
        before()
        wall, peak, requests = fleet.run(policy, *args)
        walls.append(wall)
        peaks.append(peak)
    return {"name": name, "walls": walls, "peak": max(peaks), "requests": requests}


def bench(n, runs, venv, binary, keep, server):
    workdir = tempfile.mkdtemp(prefix=f"sbps-fleet-{n}-")
    if server == "moto":
        moto = Moto(venv, workdir)
    else:
        moto = Rgw(workdir, 1 if server == "rgw-nodelay" else 0)
    ims = Ims()
    try:
        fleet = Fleet(workdir, moto, ims, binary)
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            fleet.add_images(n, pool)
            fleet.add_pe(n // 10, pool)
        objects = 4 * n + n // 10
        print(f"N={n}: {objects} objects in the bucket, filled in {time.monotonic() - started:.0f} s",
              file=sys.stderr)
        policy, full = fleet.policy("1h"), fleet.policy("0")
        results = []
        results.append(measure("cold dry run", runs, fleet.reset, fleet, policy, "--dry-run"))
        results.append(measure("cold apply", runs, fleet.reset, fleet, policy))
        results.append(measure("no-op", runs, lambda: None, fleet, policy))
        with ThreadPoolExecutor(16) as pool:
            results.append(measure("1% changed", runs, lambda: fleet.add_images(max(1, n // 100), pool),
                                   fleet, policy))
        results.append(measure("full verify", runs, lambda: None, fleet, full))
        floors = [floor(moto.url, ims.url) for _ in range(runs)]
        floor_wall = statistics.median(f[0] for f in floors)
        manifests = [r["link"]["path"].split("/", 3)[3] for r in fleet.records[:n]]
        gets = get_floor(fleet.s3, manifests, 8)
        print_table(n, objects, results, floor_wall, floors[0][1], runs, moto.name)
        print(f"\nThe server's own pace: {n:,} manifest GETs, 8 at a time, by a minimal client: "
              f"{gets:.2f} s ({gets / n * 1000:.1f} ms each).")
    finally:
        moto.stop()
        ims.shutdown()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def print_table(n, objects, results, floor_wall, floor_pages, runs, server):
    print(f"\n### {server}: N = {n:,} images + {n // 10:,} PE ({objects:,} objects; {runs} runs each)\n")
    print(f"Full-listing floor (1 IMS GET + {floor_pages} listing pages, minimal client): "
          f"{floor_wall:.3f} s\n")
    print("| run | wall (median) | min – max | ratio to floor | peak RSS | IMS GETs | S3 list pages "
          "| S3 GETs | bucket GETs | S3 PUTs | targetctl calls |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        q = r["requests"]
        median = statistics.median(r["walls"])
        print(f"| {r['name']} | {median:.3f} s | {min(r['walls']):.3f} – {max(r['walls']):.3f} "
              f"| {median / floor_wall:.2f} | {r['peak'] / 2**20:.1f} MiB | {q['ims']} | {q['list']} "
              f"| {q['get']} | {q['settings']} | {q['put']} | {q['targetctl']} |")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 5000, 20000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/sbps-reconcile"))
    parser.add_argument("--venv", default=os.path.join(ROOT, "target/test-venv"))
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--servers", default="rgw,rgw-nodelay,moto",
                        help="S3 servers, comma-separated: rgw (beast's default tcp_nodelay=0), "
                             "rgw-nodelay (tcp_nodelay=1), moto")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    print(f"sbps-reconcile fleet benchmark, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} CPU(s), {os.uname().release}")
    for n in args.sizes:
        for server in args.servers.split(","):
            bench(n, args.runs, args.venv, args.binary, args.keep, server)


if __name__ == "__main__":
    main()
