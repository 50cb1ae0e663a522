#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer, on nightly) of the parsers that read outside
# input: manifests, IMS answers, policies, saveconfig.json (parsed, then planned twice).
# Runs every target for SECONDS (default 60) from a seed corpus made of tests/hostile, the
# examples and the golden cases, and prints executions and crashes per target. Exit 1 when a
# target crashed (its input is kept under tests/fuzz/artifacts/<target>/).
#
# Usage: tests/fuzz/run.sh [SECONDS]      (.ci/run runs a short smoke run)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
export CARGO_TERM_COLOR=never
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet </dev/null
fi
corpus=target/fuzz-corpus
rm -rf "$corpus"
python3 - "$corpus" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
def seed(target, name, data):
    os.makedirs(f"{out}/{target}", exist_ok=True)
    with open(f"{out}/{target}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
def cases(file):
    with open(f"tests/hostile/{file}") as f:
        return [json.loads(line) for line in f]
for i, c in enumerate(cases("manifests.jsonl")):
    seed("manifest", f"hostile-{i}", c["manifest"])
for path in glob.glob("examples/demo/bucket/*/manifest.json"):
    seed("manifest", "demo-" + path.split("/")[-2], open(path, "rb").read())
seed("ims_answer", "all-hostile", json.dumps([c["record"] for c in cases("records.jsonl")]))
for i, c in enumerate(cases("records.jsonl")):
    seed("ims_answer", f"hostile-{i}", json.dumps([c["record"]]))
seed("ims_answer", "demo", open("examples/demo/images.json", "rb").read())
for i, c in enumerate(cases("policies.jsonl")):
    seed("policy", f"hostile-{i}", c["policy"])
for path in ["examples/policy.yaml", "examples/demo/policy.yaml"] + glob.glob("tests/cases/*/policy.yaml"):
    seed("policy", path.replace("/", "_"), open(path, "rb").read())
for i, c in enumerate(cases("saveconfigs.jsonl")):
    seed("saveconfig", f"hostile-{i}", c["text"])
for path in glob.glob("tests/cases/*/*.json"):
    if not path.endswith("snapshot.json"):
        seed("saveconfig", path.replace("/", "_"), open(path, "rb").read())
PY
status=0
for target in manifest ims_answer policy saveconfig; do
    log=target/fuzz-$target.log
    if cargo +nightly fuzz run --fuzz-dir tests/fuzz "$target" "$corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        crashes=0
    else
        crashes=1
        status=1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    echo "fuzz: $target: ${runs:-0} executions in $seconds s, $crashes crash(es)"
    if [ "$crashes" != 0 ]; then
        tail -40 "$log"
    fi
done
exit $status
