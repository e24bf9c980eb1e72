#!/usr/bin/env bash
# The main job, end to end, on this machine: three small images in a
# temporary root, the real daemon (build/src/cli.js) with a short window,
# a job reading one dataset hard, and that dataset moving to the cache under
# the job's feet. Everything runs in a private mount namespace and is torn
# down at the end; the script checks that no mount or loop device is left.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root: it attaches loop devices and mounts images" >&2
  exit 2
fi
if [[ -z "${SM_DEMO_INNER:-}" ]]; then
  SM_DEMO_INNER=1 exec unshare --mount --propagation private -- bash "$0" "$@"
fi

top=$(cd "$(dirname "$0")/.." && pwd)
cli="$top/build/src/cli.js"
[[ -f $cli ]] || { echo "demo: $cli is missing; run: bash .ci/setup" >&2; exit 2; }
root=$(mktemp -d /tmp/sm-demo.XXXXXX)
mkdir -p "$root"/{data,cache,mnt,work}
daemon=""
reader=""

cleanup() {
  set +e
  [[ -n $reader ]] && kill "$reader" 2>/dev/null && wait "$reader" 2>/dev/null
  [[ -n $daemon ]] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  findmnt -rn -o TARGET | grep "^$root/" | sort -r | while read -r t; do umount --lazy "$t"; done
  for _ in $(seq 50); do losetup -l -n -O BACK-FILE | grep -q "^$root/" || break; sleep 0.1; done
  left=$(losetup -l -n -O NAME,BACK-FILE | grep " $root/" || true)
  rm -rf "$root"
  if [[ -n $left ]]; then echo "demo: loop devices left: $left" >&2; exit 1; fi
  echo "== torn down: no mount and no loop device left"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }
mounts_under() { # prefix columns: the mount table below prefix, in mount order
  findmnt -l -o "$2" | awk -v p="$1" 'NR == 1 || index($1, p) == 1' | sed "s|$root|<root>|g"
}

say "building three squashfs images in $root/data"
make_image() { # name size_mb
  local src="$root/work/$1"
  mkdir -p "$src"
  head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$src/part-0.bin"
  echo "dataset $1" >"$src/README"
  mksquashfs "$src" "$root/work/$1.sqfs" -quiet -no-progress -noappend -all-root >/dev/null
  touch -d '1 hour ago' "$root/work/$1.sqfs"
  mv "$root/work/$1.sqfs" "$root/data/"
}
make_image coco 8
make_image imagenet 48
make_image wiki 4
ls -l "$root/data"

cat >"$root/scratch_manager.conf" <<CONF
datadir = $root/data
cachedir = $root/cache
mountdir = $root/mnt
capacity = 64MB
period = 10
interval = 1
; slow the copy down so that it can be watched
copy_bwlimit = 8MB
state_dir = $root/state
runtime_dir = $root/run
CONF
say "starting the daemon: scratch_manager --config $root/scratch_manager.conf"
cat "$root/scratch_manager.conf"
node "$cli" --config "$root/scratch_manager.conf" >"$root/daemon.log" 2>&1 &
daemon=$!

events() { # the daemon's log, one short line per event
  node -e '
    const fs = require("fs");
    for (const line of fs.readFileSync(process.argv[1], "utf8").split("\n")) {
      if (!line) continue;
      let e; try { e = JSON.parse(line); } catch { console.log("   " + line); continue; }
      const { level, time, msg, name, ...rest } = e;
      const fields = Object.entries(rest).filter(([k]) => !["source", "target", "datadir", "cachedir", "mountdir"].includes(k)).map(([k, v]) => `${k}=${v}`).join(" ");
      console.log(`   ${time.slice(11, 19)} ${level.padEnd(5)} ${msg} ${fields}`);
    }' "$root/daemon.log"
}

for _ in $(seq 100); do [[ -d $root/mnt/imagenet ]] && mountpoint -q "$root/mnt/imagenet" && break; sleep 0.1; done
say "mounted: each dataset on its slow loop device"
mounts_under "$root/mnt/" TARGET,SOURCE,FSTYPE,OPTIONS

say "a job reads imagenet in a loop; watch it move to the cache"
( while :; do find "$root/mnt/imagenet" -type f -exec dd of=/dev/null bs=1M iflag=nocache status=none if={} \; ; done ) &
reader=$!
exec 3<"$root/mnt/imagenet/README" # a file opened on the slow tier, kept open throughout
status() { node "$cli" status --config "$root/scratch_manager.conf" "$@"; }
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
  layers=$(findmnt -n -o SOURCE "$root/mnt/imagenet" | wc -l)
  printf '\n   %s  scratch_manager status\n' "$(date +%T)"
  # The dataset table (its header and the datasets' rows), not the summary above it: imagenet going from slow to copying to cached.
  status | sed -n '/^NAME /,/^$/p' | sed '/^$/d; s/^/   /'
  ((layers == 2)) && break
  sleep 1
done
((layers == 2)) || { say "imagenet was not cached within 60 s; the daemon's log:"; events; exit 1; }
sleep 3 # let the job read through the cache for a few ticks

say "mount stack at imagenet: the cached copy on top of the slow image"
mounts_under "$root/mnt/imagenet" TARGET,SOURCE,FSTYPE
for dev in $(findmnt -n -o SOURCE "$root/mnt/imagenet"); do
  printf '   %s backs %s\n' "$dev" "$(losetup -n -O BACK-FILE "$dev" | sed "s|$root|<root>|")"
done
printf '   the file opened before the overmount still reads: %s\n' "$(cat <&3)"
exec 3<&-

sleep 1
say "scratch_manager status, once imagenet is read from the cache"
status | sed "s|$root|<root>|g; s/^/   /"
kill -USR1 "$daemon"
sleep 0.5
say "what the daemon did"
events
served=$(node -e 'const l=require("fs").readFileSync(process.argv[1],"utf8").trim().split("\n").map(s=>{try{return JSON.parse(s)}catch{return {}}}).filter(e=>e.msg==="bytes served from cache").pop(); console.log(l ? (l.bytes/1048576).toFixed(1) : "0")' "$root/daemon.log")
say "bytes served from the cache so far: $served MiB"
