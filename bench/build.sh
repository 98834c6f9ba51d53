#!/usr/bin/env bash
# Build benchmark: `gantry build` against `buildah bud` of the two-stage Dockerfile, on the
# generated sample game (benchmark figures 3 and 4).
#
# Usage (as root):
#   bash bench/build.sh [--scale 3.1GB] [--update-mb 50] [--paks split|single] [--out FILE.json]
#                       [--runs N] [--keep] [--gantry BIN] [--workload DIR]
#   bash bench/build.sh --report FILE.json     (print the Markdown of an earlier result again)
#
# Per run, both tools build the same sample game (seed 1) from the same busybox base, in
# private state (buildah: its own --root/--runroot under the work dir; gantry: its own
# --cache-dir), one tool after the other, the order flipping every step:
#   cold        v1, empty buildah storage (holding only the base image) / empty gantry cache;
#               buildah's image is then pushed as gzip to an OCI layout (`buildah push oci:`),
#               timed separately: "bud + push" is the peer of gantry, which writes compressed
#               layers into its layout as it builds.
#   noop        v1 again, nothing changed, warm (buildah --layers cache / gantry cache).
#   update      `gantry sample-game --update --mb N`, then v2 warm (on the state left by v1).
#   update-cold v2 from empty state again (buildah storage with only the base / new cache).
# --paks single builds the sample shape with one very large pak (`gantry sample-game --paks
# single`); the default is the split shape.
# After the warm update step, the floor: the two SHA-256 passes every correct build of the layers
# gantry rebuilt must make (diff id over the uncompressed tar, digest over the compressed blob),
# timed as `openssl dgst -sha256` of both files at once from the page cache (two cores).
# Output sizes are the summed compressed layer sizes in each tool's image manifest (the bytes a
# registry would hold for the image); the whole OCI layout on disk is reported as well.
#
# The base: Debian's static busybox (/bin/busybox plus applet symlinks) committed with
# `buildah from scratch` + `buildah copy` + `buildah commit` into each private storage, and
# given to the Dockerfile as `--build-arg BASE=localhost/gantry-bench-base:latest` (no
# registry is reachable here).  Gantry gets the very same image: it is pushed once to an OCI
# layout and named from a copy of gantry.toml with `[base] layout = ...`, so both outputs carry
# the identical base layer blob and differ only in the game's layers.
#
# --gantry BIN takes a given binary instead of `cargo build --release -p gantry-cli`.
# --workload DIR takes the sample from DIR (made by bench/run.sh: DIR/v1 and DIR/v2 trees,
# DIR/sample.json, DIR/update.json) instead of generating it: v1 is copied (cp -a) and the
# update applied by copying the files update.json lists as changed or added from DIR/v2 and
# removing those it lists as removed, so every script of the harness builds the same bytes.
#
# Environment: BENCH_DIR (parent of the work dir, default /tmp), CARGO (default cargo).
# Writes the JSON (--out, default bench/results/build-<scale>.json) and prints a Markdown
# table on stdout (also saved next to the JSON as .md); step messages go to stderr.
set -euo pipefail

SCALE=200MB
UPDATE_MB=50
OUT=""
RUNS=1
KEEP=0
SEED=1
PAKS=split
REPORT=""
GANTRY_BIN=""
WORKLOAD=""

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

# print_report FILE.json: the Markdown for BENCHMARKS.md, from a result file.
print_report() {
  jq -r '
  def d1: (. * 10 | round) as $t | "\($t / 10 | floor).\($t % 10)";
  def d2: (. * 100 | round) as $t | "\($t / 100 | floor).\($t % 100 | if . < 10 then "0\(.)" else tostring end)";
  def s: (. | d2) + " s";
  def x: (. | d1) + "×";
  def mb: if . == 0 then "0" elif . >= 1e6 then (. / 1e6 | d1) + " MB" else (. / 1e3 | d1) + " kB" end;
  def steplabel: {cold: "cold build v1 (empty storage / cache)",
               noop: "no-op rebuild v1 (warm)",
               update: "rebuild after the update, warm",
               "update-cold": "rebuild after the update, cold (v2 from empty)"}[.];
  .runs[0] as $r0 |
  "### Build: gantry build vs buildah bud (\(.params.scale), \(.params.paks // "split") paks, update \(.params.update_mb) MB, \(.params.runs) run(s)\(if .params.runs > 1 then ", medians" else "" end))",
  "",
  "Sample game: \($r0.sample.total_bytes | mb) in \($r0.sample.files_written) files (seed \(.params.seed)); update: \($r0.update.changed_bytes | mb) changed in \($r0.update.files_changed) files, update_bytes \($r0.update.update_bytes | mb).",
  "",
  "| step | buildah bud | buildah push | bud + push | gantry build | bud / gantry | (bud + push) / gantry | buildah image (gzip layers) | gantry image (layers) |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  (.summary[] | "| \(.step | steplabel) | \(.buildah_bud_s | s) | \(.buildah_push_s | s) | \(.buildah_bud_push_s | s) | \(.gantry_s | s) | \(.ratio_bud | x) | \(.ratio_bud_push | x) | \(.buildah_layers_bytes | mb) | \(.gantry_layers_bytes | mb) |"),
  "",
  "Checks (run 1): " + ($r0.checks | to_entries | map("\(.key) = \(.value)") | join(", ")) + ".",
  "",
  "Image layers (cold, compressed): buildah \($r0.steps[0].buildah.layer_sizes | map(mb) | join(" + ")) (busybox base, COPY engine, COPY qtlibs again, ADD start.sh, ADD start.py, ADD paks); gantry \($r0.steps[0].gantry.layers | map("\(.name) \(.size | mb)") | join(" + ")) (same base blob; gantry.toml ships start.sh only and each file once).",
  "",
  "gantry per-layer (run 1):",
  "",
  "| step | layer | source | compressed | reused of uncompressed | through the chunker | seconds |",
  "|---|---|---|---:|---:|---:|---:|",
  ($r0.steps[] | .step as $st | .gantry.layers[] |
    "| \($st) | \(.name) | \(.source) | \(.size | mb) | \((.reused_bytes // 0) | mb) of \((.uncompressed_size // 0) | mb) | \((.chunked_bytes // 0) | mb) | \((.seconds // 0) | d2) |"),
  "",
  ($r0.steps[] | select(.step == "update") | .gantry | select(.floor_s != null) |
    "Floor (warm update step): the two SHA-256 passes over what gantry rebuilt, \(.floor_tar_bytes | mb) of tar and \(.floor_blob_bytes | mb) of blob, at once on two cores (`openssl dgst -sha256`): \(.floor_s | s); gantry\u0027s warm rebuild took \(.wall_s | s), \(.floor_ratio | d2)× the floor (target: within 2×)."),
  "",
  "Targets: figure 3 warm rebuild ≥ 10× faster than buildah warm: \(.summary[] | select(.step == "update") | .ratio_bud | x) (bud) / \(.summary[] | select(.step == "update") | .ratio_bud_push | x) (bud + push); no-op < 0.1 s: \(.summary[] | select(.step == "noop") | .gantry_s | s). Row 4 cold ≥ 2× faster than bud + push at no larger output: \(.summary[] | select(.step == "cold") | .ratio_bud_push | x), output \(.summary[] | select(.step == "cold") | .gantry_layers_bytes / .buildah_layers_bytes * 1000 | round / 1000) × buildah'"'"'s.",
  "",
  "Machine: \(.machine.nproc) cores, \(.machine.cpu), kernel \(.machine.kernel); load average \(.machine.loadavg_at_start // "?") at the start, \(.machine.loadavg_at_end) at the end (shared machine: other jobs may run).",
  "```",
  .machine.free_g,
  "```",
  "Versions: \(.versions.gantry) (\(.versions.git)), \(.versions.buildah), storage driver \(.versions.buildah_storage_driver). Base: \(.base).",
  "",
  "Commands (S = a private storage dir per state, GAME = the sample repo):",
  "```",
  "\(.invocation)",
  .commands.buildah_bud, .commands.buildah_push, .commands.gantry_build,
  "```"
' "$1"
}

while (($#)); do
  case "$1" in
    --scale) SCALE="$2"; shift 2 ;;
    --scale=*) SCALE="${1#*=}"; shift ;;
    --update-mb) UPDATE_MB="$2"; shift 2 ;;
    --update-mb=*) UPDATE_MB="${1#*=}"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    --runs) RUNS="$2"; shift 2 ;;
    --runs=*) RUNS="${1#*=}"; shift ;;
    --keep) KEEP=1; shift ;;
    --gantry) GANTRY_BIN="$2"; shift 2 ;;
    --paks) PAKS="$2"; shift 2 ;;
    --paks=*) PAKS="${1#*=}"; shift ;;
    --workload) WORKLOAD="$2"; shift 2 ;;
    --report) REPORT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "$REPORT" ]]; then print_report "$REPORT"; exit 0; fi
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "--runs wants a positive integer" >&2; exit 2; }
[[ "$UPDATE_MB" =~ ^[0-9]+$ ]] || { echo "--update-mb wants a whole number of MB" >&2; exit 2; }
[[ "$PAKS" == split || "$PAKS" == single ]] || { echo "--paks wants split or single" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INVOCATION="bash bench/build.sh --scale $SCALE --update-mb $UPDATE_MB --paks $PAKS --runs $RUNS${OUT:+ --out $OUT}${GANTRY_BIN:+ --gantry $GANTRY_BIN}${WORKLOAD:+ --workload $WORKLOAD}"
SHAPE_SUFFIX=""; [[ "$PAKS" == single ]] && SHAPE_SUFFIX="-single"
[[ -n "$OUT" ]] || OUT="$REPO/bench/results/build-$SCALE$SHAPE_SUFFIX.json"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

export PATH="${HOME:-/root}/.cargo/bin:${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
export BUILDAH_ISOLATION=chroot

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench] FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

[[ "$(id -u)" == 0 ]] || die "buildah with private overlay storage and chroot isolation needs root"

# ---------------------------------------------------------------------------------------------
log "checking Debian packages"
PACKAGES=(buildah skopeo busybox-static jq)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
BUSYBOX=/bin/busybox
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX missing after installing busybox-static"
"$BUSYBOX" --list | grep -qx tar || die "$BUSYBOX has no tar applet"

if [[ -n "$GANTRY_BIN" ]]; then
  GANTRY="$GANTRY_BIN"
  [[ -x "$GANTRY" ]] || die "--gantry $GANTRY is not executable"
else
  log "building gantry (cargo build --release)"
  (cd "$REPO" && "${CARGO:-cargo}" build --release --quiet -p gantry-cli) || die "cargo build failed"
  GANTRY="${CARGO_TARGET_DIR:-$REPO/target}/release/gantry"
  [[ -x "$GANTRY" ]] || die "no $GANTRY after the build"
fi
if [[ -n "$WORKLOAD" ]]; then
  for f in v1 v2 sample.json update.json; do
    [[ -e "$WORKLOAD/$f" ]] || die "--workload $WORKLOAD has no $f (bench/run.sh makes it)"
  done
fi

# ---------------------------------------------------------------------------------------------
LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg)"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/gantry-bench.XXXXXX")"
cleanup() {
  local rc=$?
  set +e
  if ((KEEP)); then
    log "kept the work dir $WORK (--keep)"
  else
    # overlay storage may leave mounts behind if a build was interrupted
    findmnt -rn -o TARGET 2>/dev/null | grep -F "$WORK/" | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null
    done
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log "work dir $WORK"

BASE_NAME=localhost/gantry-bench-base:latest
DRIVER=overlay

# The busybox tree: /bin/busybox + the applets the Dockerfile's RUN needs (and a few more).
ROOTFS="$WORK/base-rootfs"
mkdir -p "$ROOTFS/bin" "$ROOTFS/tmp" "$ROOTFS/etc"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in sh ash cat tar gzip gunzip zcat rm mkdir rmdir cp mv ln ls chmod chown echo true \
  false test env find head tail sed grep sleep touch wc; do
  ln -s busybox "$ROOTFS/bin/$applet"
done
chmod 1777 "$ROOTFS/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ROOTFS/etc/passwd"
printf 'root:x:0:\n' > "$ROOTFS/etc/group"
touch -d @0 "$ROOTFS" "$ROOTFS"/bin "$ROOTFS"/tmp "$ROOTFS"/etc "$ROOTFS"/etc/* "$ROOTFS/bin/busybox"
find "$ROOTFS" -type l -exec touch -h -d @0 {} +

bflags() { printf -- '--root %s/root --runroot %s/run --storage-driver %s' "$1" "$1" "$DRIVER"; }
# bah STORAGE ARGS...: buildah on a private storage
bah() { local s="$1"; shift; # shellcheck disable=SC2046
  buildah $(bflags "$s") "$@"; }

# new_storage DIR: a fresh private buildah storage holding only the busybox base image.
new_storage() {
  local s="$1" c
  rm -rf "$s"; mkdir -p "$s"
  if ! c="$(bah "$s" from --quiet scratch 2>"$s.err")"; then
    if [[ "$DRIVER" == overlay ]]; then
      log "overlay storage failed ($(tr '\n' ' ' < "$s.err")); falling back to vfs"
      DRIVER=vfs; new_storage "$s"; return
    fi
    die "buildah from scratch: $(cat "$s.err")"
  fi
  bah "$s" copy --quiet "$c" "$ROOTFS/" / >/dev/null
  bah "$s" config --env PATH=/bin --cmd /bin/sh "$c"
  bah "$s" commit --quiet --rm "$c" "$BASE_NAME" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Measuring helpers.  Each writes a small JSON object to the file named by its first argument.

# manifest_layers LAYOUT DIGEST: {"layers_bytes", "layer_sizes", "layout_bytes"}
manifest_layers() {
  local layout="$1" digest="$2" blob
  blob="$layout/blobs/sha256/${digest#sha256:}"
  jq --argjson layout_bytes "$(du -sb --apparent-size "$layout" | cut -f1)" \
    '{layers_bytes: ([.layers[].size] | add), layer_count: (.layers | length),
      layer_sizes: [.layers[].size], layer_digests: [.layers[].digest],
      layout_bytes: $layout_bytes}' "$blob"
}

# buildah_step OUTJSON STORAGE TAG: bud --layers, then push to an OCI layout (gzip)
buildah_step() {
  local out="$1" s="$2" tag="$3" t bud_s push_s iid mdigest layout="$STEP_DIR/buildah-oci"
  rm -rf "$layout"
  log "  buildah bud --layers ($tag)"
  t="$(now)"
  bah "$s" bud --layers --isolation chroot --pull=never \
    --build-arg "BASE=$BASE_NAME" --iidfile "$STEP_DIR/buildah.iid" \
    -t "localhost/game:$tag" -f "$GAME/Dockerfile" "$GAME" > "$STEP_DIR/buildah-bud.log" 2>&1 \
    || { tail -n 30 "$STEP_DIR/buildah-bud.log" >&2; die "buildah bud"; }
  bud_s="$(since "$t")"
  iid="$(cat "$STEP_DIR/buildah.iid")"
  log "  buildah push oci: ($tag)"
  t="$(now)"
  bah "$s" push --quiet --compression-format gzip --digestfile "$STEP_DIR/buildah.digest" \
    "localhost/game:$tag" "oci:$layout:$tag" > "$STEP_DIR/buildah-push.log" 2>&1 \
    || { tail -n 30 "$STEP_DIR/buildah-push.log" >&2; die "buildah push"; }
  push_s="$(since "$t")"
  mdigest="$(cat "$STEP_DIR/buildah.digest")"
  local cached
  cached="$(grep -c -- '--> Using cache' "$STEP_DIR/buildah-bud.log" || true)"
  manifest_layers "$layout" "$mdigest" | jq \
    --argjson bud_s "$bud_s" --argjson push_s "$push_s" --arg image_id "$iid" \
    --arg manifest_digest "$mdigest" --argjson cached_steps "$cached" \
    --argjson storage_bytes "$(du -sb "$s" | cut -f1)" \
    '{bud_s: $bud_s, push_s: $push_s, bud_push_s: ($bud_s + $push_s), image_id: $image_id,
      manifest_digest: $manifest_digest, cached_steps: $cached_steps,
      storage_bytes: $storage_bytes} + .' > "$out"
  ((KEEP)) || rm -rf "$layout"
}

# gantry_step OUTJSON CACHE: gantry build into a fresh layout
gantry_step() {
  local out="$1" cache="$2" t wall layout="$STEP_DIR/gantry-oci"
  write_spec
  rm -rf "$layout"
  log "  gantry build"
  t="$(now)"
  "$GANTRY" build "$GAME" -f "$SPEC" --output "$layout" --cache-dir "$cache" --json \
    > "$STEP_DIR/gantry.json" 2> "$STEP_DIR/gantry.log" \
    || { tail -n 30 "$STEP_DIR/gantry.log" >&2; die "gantry build"; }
  wall="$(since "$t")"
  manifest_layers "$layout" "$(jq -r .manifest_digest "$STEP_DIR/gantry.json")" | jq \
    --argjson wall_s "$wall" --slurpfile g "$STEP_DIR/gantry.json" \
    --argjson cache_bytes "$(du -sb "$cache" | cut -f1)" \
    '{wall_s: $wall_s, reported_s: $g[0].seconds, manifest_digest: $g[0].manifest_digest,
      total_size: $g[0].total_size, cache_bytes: $cache_bytes,
      layers: [$g[0].layers[] | {name, source, size, uncompressed_size, chunks,
                                 reused_bytes, chunked_bytes, seconds,
                                 warnings: ((.warnings // []) | length)}]} + .' > "$out"
  [[ "$STEP_NAME" == update ]] && sha_floor "$layout" "$STEP_DIR/gantry.json" "$out"
  ((KEEP)) || rm -rf "$layout"
}

# sha_floor LAYOUT GANTRY_JSON OUTJSON: adds {floor_s, floor_tar_bytes, floor_blob_bytes} to
# OUTJSON: the two SHA-256 passes over the layers the build did not take whole from its cache
# (their uncompressed tar and their compressed blob), run at once by `openssl dgst -sha256`
# from the page cache.
sha_floor() {
  local layout="$1" gjson="$2" out="$3" d tars=() blobs=() t floor tmp
  tmp="$STEP_DIR/floor"; mkdir -p "$tmp"
  while IFS= read -r d; do
    blobs+=("$layout/blobs/sha256/${d#sha256:}")
    gzip -dc "$layout/blobs/sha256/${d#sha256:}" > "$tmp/${d#sha256:}.tar"
    tars+=("$tmp/${d#sha256:}.tar")
  done < <(jq -r '.layers[] | select(.source == "built") | .digest' "$gjson")
  ((${#blobs[@]})) || return 0
  cat "${tars[@]}" "${blobs[@]}" > /dev/null
  t="$(now)"
  openssl dgst -sha256 "${tars[@]}" > /dev/null &
  openssl dgst -sha256 "${blobs[@]}" > /dev/null
  wait
  floor="$(since "$t")"
  jq --argjson floor_s "$floor" \
    --argjson tar_bytes "$(cat "${tars[@]}" | wc -c)" --argjson blob_bytes "$(cat "${blobs[@]}" | wc -c)" \
    '. + {floor_s: $floor_s, floor_tar_bytes: $tar_bytes, floor_blob_bytes: $blob_bytes,
          floor_ratio: (.wall_s / $floor_s)}' "$out" > "$out.tmp" && mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

# The game's gantry.toml plus the shared base, outside the game dir (the build context stays
# untouched; the spec's paths are relative to the context, not to the spec file).
write_spec() {
  grep -q '^\[base\]' "$GAME/gantry.toml" && die "the sample's gantry.toml already has a [base]"
  { cat "$GAME/gantry.toml"
    printf '\n# added by bench/build.sh: the same busybox base buildah builds FROM\n'
    printf '[base]\nlayout = "%s"\ntag = "latest"\n' "$BASE_LAYOUT"
  } > "$SPEC"
}

# step NAME FIRST BUILDAH_STORAGE GANTRY_CACHE TAG: both tools, FIRST (buildah|gantry) first
step() {
  local name="$1" first="$2" s="$3" cache="$4" tag="$5"
  STEP_DIR="$RUN_DIR/steps/$name"; STEP_NAME="$name"; mkdir -p "$STEP_DIR"
  log "run $RUN step $name ($first first)"
  if [[ "$first" == buildah ]]; then
    buildah_step "$STEP_DIR/b.json" "$s" "$tag"; gantry_step "$STEP_DIR/g.json" "$cache"
  else
    gantry_step "$STEP_DIR/g.json" "$cache"; buildah_step "$STEP_DIR/b.json" "$s" "$tag"
  fi
  jq -n --arg step "$name" --arg first "$first" --slurpfile b "$STEP_DIR/b.json" \
    --slurpfile g "$STEP_DIR/g.json" \
    '{step: $step, first: $first, buildah: $b[0], gantry: $g[0],
      ratio_bud: ($b[0].bud_s / $g[0].wall_s), ratio_bud_push: ($b[0].bud_push_s / $g[0].wall_s),
      size_ratio: ($b[0].layers_bytes / $g[0].layers_bytes)}' > "$STEP_DIR/step.json"
  jq -r '"[bench]   buildah bud \(.buildah.bud_s)s + push \(.buildah.push_s)s, \(.buildah.layers_bytes) B; gantry \(.gantry.wall_s)s, \(.gantry.layers_bytes) B"' \
    "$STEP_DIR/step.json" >&2
}

other() { [[ "$1" == buildah ]] && echo gantry || echo buildah; }

# apply_update WORKLOAD GAME: turn the copy of WORKLOAD/v1 in GAME into WORKLOAD/v2, file by
# file as update.json lists them (changed and added files are copied over, new inodes like the
# generator's own update; removed ones deleted).
apply_update() {
  local wl="$1" game="$2" f
  while IFS= read -r f; do
    mkdir -p "$(dirname "$game/$f")"
    cp -a --remove-destination "$wl/v2/$f" "$game/$f"
  done < <(jq -r '(.files_changed // []) + (.files_added // []) | .[]' "$wl/update.json")
  while IFS= read -r f; do
    rm -f "$game/$f"
  done < <(jq -r '(.files_removed // []) | .[]' "$wl/update.json")
}

# ---------------------------------------------------------------------------------------------
# The shared base as an OCI layout for gantry (pushed once from a scratch storage).
log "making the busybox base image (buildah from scratch + copy + commit)"
new_storage "$WORK/base-storage"
BASE_LAYOUT="$WORK/base-layout"
bah "$WORK/base-storage" push --quiet --compression-format gzip "$BASE_NAME" \
  "oci:$BASE_LAYOUT:latest" >/dev/null
bah "$WORK/base-storage" from --quiet --pull=never --name probe "$BASE_NAME" >/dev/null
bah "$WORK/base-storage" run --isolation chroot probe -- sh -c \
  'mkdir -p /tmp/p/d && echo hi > /tmp/p/d/f && tar -czf /tmp/p.tgz -C /tmp/p d &&
   cat /tmp/p.tgz | tar -xz -C /tmp && cat /tmp/d/f >/dev/null && rm -rf /tmp/p /tmp/p.tgz /tmp/d &&
   echo "[bench]   base ok: sh, tar -xz, gzip, rm work under chroot isolation"' >&2 \
  || die "the busybox base cannot run sh/tar/gzip under chroot isolation"
bah "$WORK/base-storage" rm probe >/dev/null
rm -rf "$WORK/base-storage"
log "buildah storage driver: $DRIVER"

RUN_FILES=()
for ((RUN = 1; RUN <= RUNS; RUN++)); do
  RUN_DIR="$WORK/run$RUN"; mkdir -p "$RUN_DIR"
  GAME="$RUN_DIR/game"
  SPEC="$RUN_DIR/gantry.bench.toml"
  # buildah first on odd runs, gantry first on even runs; the order flips every step
  if ((RUN % 2)); then A=buildah; else A=gantry; fi
  B="$(other "$A")"

  t="$(now)"
  if [[ -n "$WORKLOAD" ]]; then
    log "run $RUN/$RUNS: copying the sample game from $WORKLOAD/v1"
    cp -a "$WORKLOAD/v1" "$GAME"
    jq --arg dir "$GAME" '.dir = $dir' "$WORKLOAD/sample.json" > "$RUN_DIR/sample.json"
  else
    log "run $RUN/$RUNS: generating the sample game (--scale $SCALE --seed $SEED --paks $PAKS)"
    "$GANTRY" sample-game "$GAME" --scale "$SCALE" --seed "$SEED" --paks "$PAKS" --json \
      > "$RUN_DIR/sample.json"
  fi
  gen_s="$(since "$t")"

  S1="$RUN_DIR/storage-warm"; C1="$RUN_DIR/cache-warm"
  new_storage "$S1"
  step cold "$A" "$S1" "$C1" v1
  step noop "$B" "$S1" "$C1" v1

  t="$(now)"
  if [[ -n "$WORKLOAD" ]]; then
    log "run $RUN: applying the update from $WORKLOAD/v2"
    apply_update "$WORKLOAD" "$GAME"
    jq --arg dir "$GAME" '.dir = $dir' "$WORKLOAD/update.json" > "$RUN_DIR/update.json"
  else
    log "run $RUN: gantry sample-game --update --mb $UPDATE_MB"
    "$GANTRY" sample-game --update "$GAME" --mb "$UPDATE_MB" --seed "$SEED" --json > "$RUN_DIR/update.json"
  fi
  upd_s="$(since "$t")"
  step update "$A" "$S1" "$C1" v2
  ((KEEP)) || rm -rf "$S1" "$C1"

  S2="$RUN_DIR/storage-cold2"; C2="$RUN_DIR/cache-cold2"
  new_storage "$S2"
  step update-cold "$B" "$S2" "$C2" v2
  ((KEEP)) || rm -rf "$S2" "$C2"

  jq -n --argjson run "$RUN" --argjson gen_s "$gen_s" --argjson upd_s "$upd_s" \
    --slurpfile sample "$RUN_DIR/sample.json" --slurpfile update "$RUN_DIR/update.json" \
    --slurpfile cold "$RUN_DIR/steps/cold/step.json" \
    --slurpfile noop "$RUN_DIR/steps/noop/step.json" \
    --slurpfile update_step "$RUN_DIR/steps/update/step.json" \
    --slurpfile update_cold "$RUN_DIR/steps/update-cold/step.json" \
    '{run: $run,
      sample: ($sample[0] | del(.files) + {generate_s: $gen_s}),
      update: ($update[0] | {kind, version, tag, requested_bytes, changed_bytes, update_bytes,
                             files_changed: (.files_changed | length),
                             files_added: (.files_added | length),
                             files_removed: (.files_removed | length),
                             entries_changed: ((.entries_changed // []) | length),
                             generate_s: $upd_s}),
      steps: [$cold[0], $noop[0], $update_step[0], $update_cold[0]],
      checks: {
        buildah_noop_same_image_id: ($cold[0].buildah.image_id == $noop[0].buildah.image_id),
        buildah_noop_same_manifest_digest:
          ($cold[0].buildah.manifest_digest == $noop[0].buildah.manifest_digest),
        gantry_noop_same_manifest_digest:
          ($cold[0].gantry.manifest_digest == $noop[0].gantry.manifest_digest),
        buildah_v2_warm_equals_cold_image_id:
          ($update_step[0].buildah.image_id == $update_cold[0].buildah.image_id),
        gantry_v2_warm_equals_cold_manifest_digest:
          ($update_step[0].gantry.manifest_digest == $update_cold[0].gantry.manifest_digest),
        base_layer_identical:
          ($cold[0].buildah.layer_digests[0] == $cold[0].gantry.layer_digests[0])
      }}' > "$RUN_DIR/run.json"
  RUN_FILES+=("$RUN_DIR/run.json")
  ((KEEP)) || rm -rf "$GAME"
done

# ---------------------------------------------------------------------------------------------
log "writing $OUT"
mkdir -p "$(dirname "$OUT")"
cpu_model="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)"
git_rev="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || git_rev="$git_rev+dirty"

BUD_CMD="buildah --root S/root --runroot S/run --storage-driver $DRIVER bud --layers --isolation chroot --pull=never --build-arg BASE=$BASE_NAME -t localhost/game:TAG -f GAME/Dockerfile GAME"
PUSH_CMD="buildah --root S/root --runroot S/run --storage-driver $DRIVER push --compression-format gzip localhost/game:TAG oci:LAYOUT:TAG"
GANTRY_CMD="gantry build GAME -f gantry.bench.toml --output LAYOUT --cache-dir CACHE --json   (gantry.bench.toml = GAME/gantry.toml + [base] layout = BASE_LAYOUT, tag = \"latest\")"

jq -n \
  --arg invocation "$INVOCATION" --arg scale "$SCALE" --argjson update_mb "$UPDATE_MB" \
  --argjson runs "$RUNS" --argjson seed "$SEED" --arg paks "$PAKS" --arg driver "$DRIVER" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --argjson nproc "$(nproc)" --arg cpu "$cpu_model" --arg free_g "$(free -g)" \
  --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" --arg loadavg0 "$LOADAVG_START" --arg kernel "$(uname -r)" \
  --arg gantry_version "$("$GANTRY" --version)" --arg buildah_version "$(buildah --version)" \
  --arg git_rev "$git_rev" \
  --arg bud_cmd "$BUD_CMD" --arg push_cmd "$PUSH_CMD" --arg gantry_cmd "$GANTRY_CMD" \
  --arg base "busybox-static $(dpkg-query -W -f='${Version}' busybox-static) tree (/bin/busybox + applet symlinks) committed as $BASE_NAME via buildah from scratch/copy/commit; gantry gets it as [base] layout (the same blob)" \
  '{benchmark: "build", invocation: $invocation, date: $date,
    params: {scale: $scale, update_mb: $update_mb, runs: $runs, seed: $seed, paks: $paks},
    machine: {nproc: $nproc, cpu: $cpu, free_g: $free_g, loadavg_at_start: $loadavg0, loadavg_at_end: $loadavg,
              kernel: $kernel},
    versions: {gantry: $gantry_version, git: $git_rev, buildah: $buildah_version,
               buildah_storage_driver: $driver},
    base: $base,
    commands: {buildah_bud: $bud_cmd, buildah_push: $push_cmd, gantry_build: $gantry_cmd},
    runs: [inputs]}
   | def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
     . + {summary: [.runs[0].steps[].step as $s | {step: $s} +
       ([.runs[].steps[] | select(.step == $s)] as $xs | {
         buildah_bud_s: ([$xs[].buildah.bud_s] | median),
         buildah_push_s: ([$xs[].buildah.push_s] | median),
         buildah_bud_push_s: ([$xs[].buildah.bud_push_s] | median),
         gantry_s: ([$xs[].gantry.wall_s] | median),
         ratio_bud: ([$xs[].ratio_bud] | median),
         ratio_bud_push: ([$xs[].ratio_bud_push] | median),
         buildah_layers_bytes: $xs[0].buildah.layers_bytes,
         gantry_layers_bytes: $xs[0].gantry.layers_bytes})]}' \
  "${RUN_FILES[@]}" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"

print_report "$OUT" | tee "${OUT%.json}.md"
log "done: $OUT (Markdown also in ${OUT%.json}.md)"
