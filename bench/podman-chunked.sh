#!/usr/bin/env bash
# Node-side update benchmark, fourth way (benchmark figure 5): podman with zstd:chunked partial
# pulls. Meant to be called by bench/snapshotter.sh; runs on its own too.
#   1. builds v1 and v2 of the sample game as a Docker user would (buildah bud --layers,
#      FROM scratch + the busybox base tar, the engine, start.sh and the paks as separate
#      layers; same files at the same paths as `gantry build`), in a private buildah storage;
#   2. pushes both to the registry with `podman push --compression-format zstd:chunked`;
#   3. on the node (podman, storage on --node: overlay driver, enable_partial_images,
#      use_hard_links=false, so files found locally are reflinked on XFS) pulls v1 cold, then
#      times the v2 step: `podman pull` of v2, then `podman run -d` of a container of v2 that
#      runs `sha256sum` of the --check path (v2_seconds ends when the container has started,
#      like PullImage → started container in the main bench; the sha is checked after).
# Pulls go through a counting TCP proxy (bytes the registry sent); bytes written to the node's
# disk come from --disk-stat (field 7, after sync); reflinked bytes from FIEMAP. Fails if the
# v2 pull's debug log has no "Retrieved partial blob". Configuration is private, and so is
# podman's blob-info cache (a bind mount in a private mount namespace): nothing global changes.
#
# Usage (as root): bash bench/podman-chunked.sh --game-v1 DIR --game-v2 DIR --base-tar FILE
#     --registry HOST:PORT --node DIR --disk-stat /sys/block/loopN/stat
#     --check /PATH/IN/IMAGE=SHA256 [--work DIR] [--keep]
# --game-v1/--game-v2: `gantry sample-game` directories (engine/*.tar.gz.x*, runtime/start.sh,
# paks/). Prints one JSON object on stdout, logs on stderr.
# --work: where build storage, configuration and logs go (default $BENCH_DIR or /tmp).
# Needs: podman, buildah, runc, conmon, python3, jq, curl, util-linux, e2fsprogs (filefrag).
set -euo pipefail

V1=""; V2=""; BASE_TAR=""; REGISTRY=""; NODE_ARG=""; DISK_STAT=""; CHECK=""; WORK_ARG=""; KEEP=0
ARGS=("$@")
while (($#)); do
  case "$1" in
    --game-v1) V1="$2"; shift 2 ;;
    --game-v2) V2="$2"; shift 2 ;;
    --base-tar) BASE_TAR="$2"; shift 2 ;;
    --registry) REGISTRY="$2"; shift 2 ;;
    --node) NODE_ARG="$2"; shift 2 ;;
    --disk-stat) DISK_STAT="$2"; shift 2 ;;
    --check) CHECK="$2"; shift 2 ;;
    --work) WORK_ARG="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
log() { printf '[podman-chunked %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[podman-chunked] FAILED: %s\n' "$*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "needs root (overlay mounts, a mount namespace)"
for v in V1 V2 BASE_TAR REGISTRY NODE_ARG DISK_STAT CHECK; do [[ -n "${!v}" ]] || die "missing argument for $v (see --help)"; done
for d in "$V1" "$V2"; do compgen -G "$d/engine/*.tar.gz.x*" > /dev/null || die "$d: no engine/*.tar.gz.x*"
  [[ -d "$d/paks" && -f "$d/runtime/start.sh" ]] || die "$d is not a gantry sample-game directory"; done
[[ -f "$BASE_TAR" && -d "$NODE_ARG" && -r "$DISK_STAT" ]] || die "--base-tar, --node or --disk-stat missing"
[[ "$CHECK" == /*=* ]] || die "--check wants /PATH=SHA256"
CHECK_PATH="${CHECK%%=*}"; CHECK_SHA="${CHECK#*=}"
for t in podman buildah runc conmon python3 jq curl unshare findmnt filefrag; do command -v "$t" > /dev/null || die "$t missing"; done

# Re-run in a private mount namespace (no --fork: same pid, signals and exit code).
if [[ -z "${PODMAN_CHUNKED_NS:-}" ]]; then
  PODMAN_CHUNKED_NS=1 exec unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "${ARGS[@]}"
fi

WORK_BASE="${WORK_ARG:-${BENCH_DIR:-/tmp}}"; mkdir -p "$WORK_BASE"
WORK="$(cd "$(mktemp -d "$WORK_BASE/podman-chunked.XXXXXX")" && pwd)"
NODE="$(mktemp -d "$(cd "$NODE_ARG" && pwd)/podman-chunked.XXXXXX")"
# podman wants a runroot path of at most 50 characters: the runroots (transient state, tmpfs
# on a real node) go to a tmpfs on a short path, mounted in this namespace only.
RUN="$(mktemp -d /run/podman-chunked.XXXXXX)"; mount -t tmpfs -o size=256m,mode=0700 tmpfs "$RUN"
mkdir -p "$WORK/conf/build" "$WORK/conf/node" "$WORK/logs" "$WORK/bic-build" "$WORK/bic-node"
PIDS=(); BIC=""
conf() {  # run "$2..." with the private configuration of side $1 (build or node)
  CONTAINERS_CONF="$WORK/conf/$1/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/conf/$1/storage.conf" \
    CONTAINERS_REGISTRIES_CONF="$WORK/conf/registries.conf" TMPDIR="$WORK/conf/$1/tmp" "${@:2}"; }
nodepod() { conf node podman "$@"; }
cleanup() {
  local rc=$? p; set +e
  if ((!KEEP)) && [[ -f "$WORK/conf/node/storage.conf" ]]; then nodepod rm -af -t 0 > /dev/null 2>&1; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  { findmnt -rn -o TARGET | grep -F -e "$WORK/" -e "$NODE/" || true; } | sort -r | while read -r m; do umount -l "$m"; done
  [[ -n "$BIC" ]] && umount "$BIC"  # our bind (this namespace only)
  umount "$RUN" && rmdir "$RUN"
  if ((KEEP)); then log "kept $WORK and $NODE"; else rm -rf "$WORK" "$NODE"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# podman 4.x as root keeps its blob-info cache in /var/lib/containers/cache whatever the
# configuration says: put a private directory there (build and node get separate ones).
private_bic() {
  [[ -z "$BIC" ]] || umount "$BIC"; BIC=""
  if [[ -d /var/lib/containers/cache ]]; then BIC=/var/lib/containers/cache
  elif [[ -d /var/lib/containers ]]; then BIC=/var/lib/containers
  else log "warning: no /var/lib/containers to cover; podman will create /var/lib/containers/cache"; return 0; fi
  mount --bind "$1" "$BIC"
}

# Private configuration: native overlay (works as root on XFS and ext4, no fuse-overlayfs);
# the node's storage allows partial pulls.
for side in build node; do
  if [[ $side == node ]]; then root="$NODE"; else root="$WORK/build"; fi
  cat > "$WORK/conf/$side/storage.conf" << EOF
[storage]
driver = "overlay"
graphroot = "$root/graph"
runroot = "$RUN/$side"
[storage.options]
pull_options = {enable_partial_images = "$([[ $side == node ]] && echo true || echo false)", use_hard_links = "false", ostree_repos = ""}
EOF
  cat > "$WORK/conf/$side/containers.conf" << EOF
[network]
network_config_dir = "$root/net"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$RUN/$side/events.log"
tmp_dir = "$RUN/$side/libpod"
image_copy_tmp_dir = "$root/tmp"
runtime = "runc"
EOF
  mkdir -p "$root/tmp"; ln -s "$root/tmp" "$WORK/conf/$side/tmp"  # TMPDIR: the node's is on its disk
done
printf '{"default": [{"type": "insecureAcceptAnything"}]}\n' > "$WORK/conf/policy.json"
POLICY=(--signature-policy "$WORK/conf/policy.json")

# The counting proxy: forwards 127.0.0.1:<any port> to the registry; its state file holds the
# bytes the registry sent ("down") over closed and open connections and the open count.
cat > "$WORK/proxy.py" << 'EOF'
import asyncio, json, os, sys
host, port, state = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = {"port": 0, "active": 0, "connections": 0, "down": 0, "up": 0}
def dump():
    with open(state + ".tmp", "w") as f: json.dump(n, f)
    os.replace(state + ".tmp", state)
async def pipe(r, w, key, other):
    try:
        while data := await r.read(1 << 18):
            n[key] += len(data); w.write(data); await w.drain()
        if w.can_write_eof(): w.write_eof()
    except OSError:
        w.close(); other.close()
async def conn(cr, cw):
    n["active"] += 1; n["connections"] += 1; dump()
    try:
        ur, uw = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(cr, uw, "up", cw), pipe(ur, cw, "down", uw)); uw.close()
    except OSError: pass
    finally:
        cw.close(); n["active"] -= 1; dump()
async def main():
    srv = await asyncio.start_server(conn, "127.0.0.1", 0)
    n["port"] = srv.sockets[0].getsockname()[1]; dump()
    await srv.serve_forever()
asyncio.run(main())
EOF
STATE="$WORK/proxy.json"
proxy_down() {  # bytes the registry sent so far, once every connection has closed
  local i
  for ((i = 0; i < 100; i++)); do [[ "$(jq .active "$STATE")" == 0 ]] && break; sleep 0.05; done
  jq .down "$STATE"
}
printf 'unqualified-search-registries = []\n[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REGISTRY" \
  > "$WORK/conf/registries.conf"

# Build contexts and the Dockerfile. Paths as `gantry build` lays them out: the engine tar
# unpacked at /, start.sh at /start.sh (0755), paks/ under /BinLinux64.Dedicated/.
cat > "$WORK/Dockerfile" << 'EOF'
FROM scratch
ADD base.tar /
COPY engine/ /
COPY start.sh /start.sh
COPY paks/ /BinLinux64.Dedicated/
ENV GAME=MultiplayerSample
WORKDIR /BinLinux64.Dedicated
EXPOSE 33435/udp
ENTRYPOINT ["/start.sh"]
EOF
private_bic "$WORK/bic-build"
IMAGE="bench/game-zstdchunked"
BUILD_ROOT=(--root "$WORK/build/graph" --runroot "$RUN/build" --storage-driver overlay)
for v in 1 2; do
  game="$V1"; [[ $v == 2 ]] && game="$V2"
  ctx="$WORK/ctx$v"; mkdir -p "$ctx/engine"
  cp "$BASE_TAR" "$ctx/base.tar"
  cat "$game"/engine/*.tar.gz.x* | tar -xz -C "$ctx/engine"
  install -m 0755 "$game/runtime/start.sh" "$ctx/start.sh"
  cp -al "$game/paks" "$ctx/paks" 2>/dev/null || { rm -rf "$ctx/paks"; cp -a "$game/paks" "$ctx/paks"; }
  log "buildah bud v$v"
  conf build buildah bud "${BUILD_ROOT[@]}" "${POLICY[@]}" --layers -f "$WORK/Dockerfile" -t "localhost/game:v$v" "$ctx" \
    > "$WORK/logs/build-v$v.log" 2>&1 || { tail -n 20 "$WORK/logs/build-v$v.log" >&2; die "buildah bud v$v"; }
  log "podman push v$v (zstd:chunked) to $REGISTRY/$IMAGE:v$v"
  conf build podman "${BUILD_ROOT[@]}" push --compression-format zstd:chunked --tls-verify=false \
    "localhost/game:v$v" "$REGISTRY/$IMAGE:v$v" > "$WORK/logs/push-v$v.log" 2>&1 \
    || { tail -n 20 "$WORK/logs/push-v$v.log" >&2; die "podman push v$v"; }
  rm -rf "$ctx"
done
# The v1 layers and the v2 layers that v1 lacks must be zstd:chunked (podman 4.3 drops the
# annotations of layers it reuses from v1 when pushing v2; the node has those already).
manifest() { curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REGISTRY/v2/$IMAGE/manifests/$1"; }
read -r CHUNKED NEW_LAYERS V2_NEW_BYTES IMAGE_BYTES < <(jq -rs '(.[0].layers | map(.digest)) as $o
  | [.[1].layers[] | select(.digest as $d | $o | index($d) | not)] as $new
  | [(.[0].layers + $new | all(.annotations["io.containers.zstd-chunked.manifest-checksum"] != null)),
     ($new | length), ([$new[].size] | add // 0), ([.[1].layers[].size] | add)] | map(tostring) | join(" ")' \
  <(manifest v1) <(manifest v2))
[[ "$CHUNKED" == true ]] || die "pushed layers are not zstd:chunked"

# The node.
private_bic "$WORK/bic-node"
python3 "$WORK/proxy.py" "${REGISTRY%:*}" "${REGISTRY##*:}" "$STATE" 2> "$WORK/logs/proxy.log" & PIDS+=($!)
for ((i = 0; i < 100; i++)); do [[ -s "$STATE" ]] && break; sleep 0.05; done
[[ -s "$STATE" ]] || die "the counting proxy did not start"
PROXY="127.0.0.1:$(jq .port "$STATE")"
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$PROXY" >> "$WORK/conf/registries.conf"
[[ "$(nodepod info --format '{{.Store.GraphDriverName}}')" == overlay ]] || die "node storage is not overlay"
log "node: $NODE ($(findmnt -n -o FSTYPE --target "$NODE")), pulls through $PROXY → $REGISTRY"
# podman 4.3 sets its own RLIMIT_NPROC to 32768 and cannot raise it again for the container;
# ask runc for what podman has (nofile: podman falls back to the hard limit).
NPROC="$(ulimit -Hu)"; [[ "$NPROC" == unlimited || "$NPROC" -gt 32768 ]] && NPROC=32768
ULIMITS=(--ulimit "nofile=$(ulimit -Hn)" --ulimit "nproc=$NPROC")
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
sectors() { sync; awk '{ print $7 }' "$DISK_STAT"; }

log "cold pull of v1"; t0="$EPOCHREALTIME"
nodepod pull --log-level=debug "${POLICY[@]}" "$PROXY/$IMAGE:v1" > /dev/null 2> "$WORK/logs/pull-v1.log" \
  || { tail -n 20 "$WORK/logs/pull-v1.log" >&2; die "podman pull v1"; }
V1_SECONDS="$(secs "$t0" "$EPOCHREALTIME")"; REG1="$(proxy_down)"

log "v2 step: pull, then a started container"
w0="$(sectors)"; t0="$EPOCHREALTIME"
nodepod pull --log-level=debug "${POLICY[@]}" "$PROXY/$IMAGE:v2" > /dev/null 2> "$WORK/logs/pull-v2.log" \
  || { tail -n 20 "$WORK/logs/pull-v2.log" >&2; die "podman pull v2"; }
t1="$EPOCHREALTIME"
CID="$(nodepod run -d --pull never --network none "${ULIMITS[@]}" --entrypoint /bin/sh "$PROXY/$IMAGE:v2" \
  -c "sha256sum $CHECK_PATH" 2> "$WORK/logs/run-v2.log")" || { cat "$WORK/logs/run-v2.log" >&2; die "podman run v2"; }
t2="$EPOCHREALTIME"
CODE="$(nodepod wait "$CID")"; OUT="$(nodepod logs "$CID" 2>&1)"; w1="$(sectors)"; REG2="$(( $(proxy_down) - REG1 ))"
[[ "$CODE" == 0 && "$OUT" == "$CHECK_SHA"* ]] || die "the container's $CHECK_PATH is not v2's ($CHECK_SHA): exit $CODE, $OUT"
nodepod rm "$CID" > /dev/null
# Reflinked bytes (c/storage does not count them): extents flagged shared (FIEMAP, filefrag)
# in the files of the layers v2 added on the node.
layer_dirs() { nodepod image inspect --format '{{.GraphDriver.Data.UpperDir}}:{{.GraphDriver.Data.LowerDir}}' "$PROXY/$IMAGE:$1" | tr ':' '\n' | sed '/^$/d' | sort; }
mapfile -t NEW_DIRS < <(comm -13 <(layer_dirs v1) <(layer_dirs v2))
REFLINKED=0
((${#NEW_DIRS[@]})) && REFLINKED="$(find "${NEW_DIRS[@]}" -type f -size +0 -print0 | { xargs -0 -r filefrag -v 2> /dev/null || true; } \
  | sed -E 's/\.\. +/../g' | awk '/^File size of .* blocks of [0-9]+ bytes/ { bs = $(NF - 1) }
    $1 ~ /^[0-9]+:$/ && $NF ~ /shared/ { s += $4 * bs } END { printf "%d\n", s }')"

# Did partial pulls engage? c/storage logs "Missing X bytes out of Y" per layer: X not found
# on the node. More than X may come from the registry: past 1024 ranges c/storage merges
# neighbouring ranges, local chunks between them included. Changed files are written whole.
PARTIAL="$(grep -c 'Retrieved partial blob' "$WORK/logs/pull-v2.log" || true)"
((PARTIAL > 0)) || die "the v2 pull retrieved no partial blob (see $WORK/logs/pull-v2.log; use --keep)"
MISSING="$(sed -n 's/.*Missing \([0-9]*\) bytes out of.*/\1/p' "$WORK/logs/pull-v2.log" | awk '{ m += $1 } END { printf "%d", m }')"
WRITTEN=$(((w1 - w0) * 512))
log "v1 $V1_SECONDS s; v2 pull $(secs "$t0" "$t1") s, started $(secs "$t0" "$t2") s; registry $REG2 B; written $WRITTEN B; $PARTIAL partial blobs"

jq -n --argjson v1 "$V1_SECONDS" --argjson pull "$(secs "$t0" "$t1")" --argjson run "$(secs "$t1" "$t2")" \
  --argjson v2 "$(secs "$t0" "$t2")" --argjson reg1 "$REG1" --argjson reg2 "$REG2" \
  --argjson written "$WRITTEN" --argjson reflinked "$REFLINKED" --argjson partial "$PARTIAL" --argjson missing "$MISSING" \
  --argjson new "$NEW_LAYERS" --argjson image "$IMAGE_BYTES" --argjson newb "$V2_NEW_BYTES" \
  --arg podman "$(podman --version | awk '{ print $3 }')" --arg buildah "$(buildah --version | awk '{ print $3 }')" \
  --arg check "$CHECK_PATH = $CHECK_SHA" --arg fs "$(findmnt -n -o FSTYPE --target "$NODE")" \
  '{way: "podman-zstd-chunked", v1_seconds: $v1, v2_pull_seconds: $pull, v2_run_seconds: $run, v2_seconds: $v2,
    registry_bytes_v1: $reg1, registry_bytes_v2: $reg2, written_bytes_v2: $written, reflinked_bytes_v2: $reflinked,
    partial_blobs: $partial, cstorage_missing_bytes_v2: $missing,
    v2_new_layers: $new, v2_new_layer_bytes: $newb, image_bytes: $image, node_fs: $fs,
    podman_version: $podman, buildah_version: $buildah, push_compression: "zstd:chunked", checked: $check}'
