#!/usr/bin/env bash
# Chunking parameters against what they cost: for each "min avg max large_file_scale"
# given, generate the sample game, build v1, apply the asset update, build v2 (warm cache),
# and print what a node holding v1 must download for v2 at chunk level (new chunks + index
# blobs of changed layers), that figure over the update's own size (gzip -6 of what is new or changed), and the
# image size. Usage:
#   bash bench/chunking.sh [--scale 1GB] [--update-mb 16] "16384 65536 262144 4" ...
# GANTRY (default: target/release/gantry, built if missing) and BENCH_DIR (default /tmp).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scale=1GB; mb=16
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --update-mb) mb=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || set -- "16384 65536 262144 4"
G=${GANTRY:-${CARGO_TARGET_DIR:-target}/release/gantry}
[[ -x $G ]] || cargo build --release -q -p gantry-cli
D=$(mktemp -d "${BENCH_DIR:-/tmp}/gantry-chunking.XXXXXX")
trap 'rm -rf "$D"' EXIT
echo "| min | avg | max | large_file_scale | chunk-level bytes | × update's own size | image | % of image | v1 build s | v2 build s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for cfg in "$@"; do
  read -r min avg max scale_f <<< "$cfg"
  rm -rf "$D"/*
  "$G" sample-game "$D/g" --scale "$scale" > /dev/null
  chunking=$(printf '[chunking]\nmin = %s\navg = %s\nmax = %s\nlarge_file_scale = %s\n' "$min" "$avg" "$max" "$scale_f")
  echo "$chunking" >> "$D/g/gantry.toml"
  "$G" build "$D/g" --output "$D/v1" --cache-dir "$D/cache" --json > "$D/v1.json"
  "$G" sample-game --update "$D/g" --mb "$mb" --json > "$D/update.json"
  grep -q '^\[chunking\]' "$D/g/gantry.toml" || echo "$chunking" >> "$D/g/gantry.toml"
  "$G" build "$D/g" --output "$D/v2" --cache-dir "$D/cache" --json > "$D/v2.json"
  python3 - "$D" "$cfg" <<'PY'
import gzip, json, sys
d, cfg = sys.argv[1], sys.argv[2].split()
def layers(layout):
    top = json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(open(f"{layout}/blobs/sha256/{top}"))
    for l in manifest["layers"]:
        blob = open(f"{layout}/blobs/sha256/" + l["annotations"]["dev.gantry.chunk-index"].split(":")[1], "rb").read()
        yield l["digest"], l["size"], json.loads(gzip.decompress(blob)), len(blob)
old = list(layers(f"{d}/v1")); new = list(layers(f"{d}/v2"))
old_chunks = {c[2] for _, _, idx, _ in old for c in idx["chunks"]}
old_layers = {digest for digest, _, _, _ in old}
moved = sum(isz + sum(c[0] for c in idx["chunks"] if c[2] not in old_chunks)
            for digest, _, idx, isz in new if digest not in old_layers)
image = sum(size for _, size, _, _ in new)
update = json.load(open(f"{d}/update.json"))["update_bytes"]
v1 = json.load(open(f"{d}/v1.json"))["seconds"]; v2 = json.load(open(f"{d}/v2.json"))["seconds"]
print(f"| {' | '.join(cfg)} | {moved} | {moved/update:.2f} | {image} | {100*moved/image:.2f}% | {v1:.1f} | {v2:.2f} |")
PY
done
