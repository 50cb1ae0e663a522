#!/usr/bin/env python3
"""`sbps-reconcile fleet` at scale: T targets' LUN ledgers of N entries each, in a bucket of
a real Ceph RGW (tests/rgw.sh) on 127.0.0.1, read by the release binary.

Run it with benches/fleet-view.sh. For each beast tcp_nodelay setting it fills the ledger
prefix (every target serves the same N identities at the same numbers, but one target,
which has 10 at other numbers), then times `fleet --output json` and `fleet` (text) RUNS
times each: median wall time, peak RSS, and the requests RGW logged (listing pages, GETs).
A benchmark, not a test: it asserts nothing.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "boot-images"
PREFIX = "sbps-reconcile/luns/"


def ledger(target, n, shift):
    entries = {}
    for i in range(n):
        name = f"{i:015x}"
        lun = i + (1000000 if shift and i < 10 else 0)
        entries[name] = {
            "lun": lun % 65536, "kind": "rootfs", "source": f"s3://{BUCKET}/img-{i:06d}/rootfs",
            "etag": f"{i:032x}", "images": [{"id": f"img-{i:06d}", "name": f"compute-image-{i}"}],
            "first_projected": 1765000000, "unwanted_since": None, "removed": None}
    return {"schema_version": 1, "target": target, "high_water": n + 100,
            "tool_version": "0.1.0", "last_run": int(time.time()), "entries": entries}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/sbps-reconcile"))
    args = parser.parse_args()
    import boto3
    from botocore.config import Config
    print(f"sbps-reconcile fleet view, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU(s): "
          f"{args.targets} targets x {args.images} LUNs, {args.runs} runs each\n")
    print("| RGW beast | output | wall (median) | min – max | peak RSS | list pages | GETs |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for nodelay in (0, 1):
        work = tempfile.mkdtemp(prefix="sbps-fleet-view-")
        rgw = os.path.join(work, "rgw")
        env = dict(os.environ, SBPS_RGW_TCP_NODELAY=str(nodelay))
        subprocess.run(["bash", os.path.join(ROOT, "tests/rgw.sh"), "start", rgw, "3600"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        try:
            values = dict(line.split("=", 1) for line in open(os.path.join(rgw, "env")).read().split())
            url, log = values["RGW_ENDPOINT"], values["RGW_LOG"]
            s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=values["RGW_ACCESS_KEY"],
                              aws_secret_access_key=values["RGW_SECRET_KEY"],
                              config=Config(s3={"addressing_style": "path"}))
            s3.create_bucket(Bucket=BUCKET)
            size = 0
            for t in range(args.targets):
                target = f"iqn.2023-06.csm.iscsi:ncn-w{t:03d}"
                body = json.dumps(ledger(target, args.images, t == 7), indent=2).encode()
                size += len(body)
                s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{target}.json", Body=body)
            with open(os.path.join(work, "s3.creds"), "w") as f:
                f.write(f"{values['RGW_ACCESS_KEY']}:{values['RGW_SECRET_KEY']}\n")
            os.chmod(os.path.join(work, "s3.creds"), 0o600)
            policy = os.path.join(work, "policy.yaml")
            with open(policy, "w") as f:
                f.write(f"""target:
  iqn: "iqn.2023-06.csm.iscsi:ncn-w000"
  portals: ["10.252.1.10:3260"]
catalogue:
  bucket: {BUCKET}
  mount: {work}
  require_mountpoint: false
  pe:
    prefixes: ["PE/"]
  s3:
    endpoint: {url}
    credentials_file: {work}/s3.creds
    cache_dir: ""
""")
            for output in ("json", "text"):
                walls, peaks, counts = [], [], None
                for _ in range(args.runs):
                    mark = os.path.getsize(log)
                    rss = os.path.join(work, "rss")
                    start = time.monotonic()
                    done = subprocess.run(
                        ["/usr/bin/time", "-f", "%M", "-o", rss, args.binary, "--policy", policy,
                         "fleet", "--output", output],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                    walls.append(time.monotonic() - start)
                    if done.returncode not in (0, 2):
                        sys.exit(done.stderr.decode(errors="replace")[-2000:])
                    peaks.append(int(open(rss).read().split()[-1]) * 1024)
                    with open(log, "rb") as f:
                        f.seek(mark)
                        text = f.read().decode(errors="replace")
                    found = re.findall(r'"(GET|PUT|HEAD) (\S+) HTTP', text)
                    counts = (sum(1 for m, t in found if "list-type=2" in t),
                              sum(1 for m, t in found if m == "GET" and "list-type=2" not in t))
                median = statistics.median(walls)
                print(f"| tcp_nodelay={nodelay} | {output} | {median:.3f} s | {min(walls):.3f} – "
                      f"{max(walls):.3f} | {max(peaks) / 2**20:.1f} MiB | {counts[0]} | {counts[1]} |")
                sys.stdout.flush()
        finally:
            subprocess.run(["bash", os.path.join(ROOT, "tests/rgw.sh"), "stop", rgw], check=False)
    print(f"\n{args.targets} ledgers of {args.images} entries, {size / 2**20:.1f} MiB in all.")


if __name__ == "__main__":
    main()
