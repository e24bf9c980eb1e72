#!/usr/bin/env bash
# Builds the .deb and the .rpm of scratch_manager into packaging/out/, from a
# clean checkout after `npm ci` (`npm run package` runs this script):
#   1. npm run build (tsc), then packaging/bundle.mjs (esbuild): one ES module
#      with every npm dependency inside, and the licence files that go with it;
#   2. the files of the package staged in packaging/out/deb/root, then
#      dpkg-deb --root-owner-group --build;
#   3. rpmbuild -bb (Debian's `rpm` package has it) on packaging/rpm/*.spec.in.
# The version is package.json's. Needs: node, npm, dpkg-deb, gzip, and
# rpmbuild for the .rpm (SM_SKIP_RPM=1 skips it).
# Environment: SM_MAINTAINER="Name <mail>" for the Maintainer field;
# SOURCE_DATE_EPOCH for the files' dates (default: the last commit's).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out="$here/out"
cd "$top"

die() { echo "package: $*" >&2; exit 1; }
[[ -d node_modules/esbuild ]] || die "node_modules/esbuild is missing: run npm ci first"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing"
if [[ -z ${SM_SKIP_RPM:-} ]] && ! command -v rpmbuild >/dev/null; then
  die "rpmbuild is missing: apt-get install rpm (or SM_SKIP_RPM=1 to build the .deb only)"
fi

version=$(node -p 'require("./package.json").version')
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$ ]] || die "package.json version \"$version\" is not X.Y.Z[-pre][+build]"
# A semver pre-release (1.0.0-rc.1) sorts before its release: "~" in both formats.
pkgversion=${version/-/\~}
maintainer=${SM_MAINTAINER:-scratch_manager maintainers <scratch-manager@example.org>}
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
# Never let the machine's own settings leak into the packages.
umask 022
export LC_ALL=C TZ=UTC

echo "package: scratch_manager $version (deb $pkgversion, rpm $pkgversion-1)"
npm run --silent build

rm -rf "$out"
mkdir -p "$out"
bundle="$out/bundle"
node "$here/bundle.mjs" --entry build/src/cli.js --outdir "$bundle" --version "$version"

# The bundle must run alone, with no node_modules anywhere above it.
smoke=$(mktemp -d /tmp/sm-bundle.XXXXXX)
trap 'rm -rf "$smoke"' EXIT
cp "$bundle/scratch_manager.mjs" "$smoke/"
got=$(cd "$smoke" && node scratch_manager.mjs --version) || die "the bundle does not run: node scratch_manager.mjs --version failed"
[[ $got == "$version" ]] || die "the bundle says version \"$got\", package.json says \"$version\""
# --help, then each command's (run, status, pin, ...), for the manual page.
help=$(cd "$smoke" && COLUMNS=80 node scratch_manager.mjs --help)
commands=$(awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && /^$/ { on = 0 }' <<<"$help" | grep -vx help)
for c in $commands; do
  help+=$'\n\n'$(cd "$smoke" && COLUMNS=80 node scratch_manager.mjs "$c" --help) || die "scratch_manager $c --help failed"
done

# Manual page: the template, with the program's own --help as OPTIONS (roff-escaped).
mkdir -p "$out/man"
date_str=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
roff_help=$(printf '%s\n' "$help" | sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/" -e 's/-/\\-/g')
# (ENVIRON, not awk -v, which would interpret the backslashes.)
# The configuration keys, from the one table of keys (src/config.ts).
keys=$(node "$here/config-reference.mjs") || die "packaging/config-reference.mjs failed"
KEYS=$keys HELP=$roff_help VER=$version DATE=$date_str awk '
  /^@HELP@$/ { print ENVIRON["HELP"]; next }
  /^@KEYS@$/ { print ENVIRON["KEYS"]; next }
  { gsub(/@VERSION@/, ENVIRON["VER"]); gsub(/@DATE@/, ENVIRON["DATE"]); print }
' "$here/scratch_manager.8.in" >"$out/man/scratch_manager.8"

# ---- .deb -------------------------------------------------------------------
root="$out/deb/root"
doc="$root/usr/share/doc/scratch-manager"
install -D -m 0644 "$bundle/scratch_manager.mjs" "$root/usr/lib/scratch_manager/scratch_manager.mjs"
install -D -m 0755 "$here/scratch_manager" "$root/usr/bin/scratch_manager"
install -D -m 0644 scratch_manager.service "$root/lib/systemd/system/scratch_manager.service"
install -D -m 0644 scratch_manager.conf "$root/etc/scratch_manager.conf"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 SECURITY.md "$doc/SECURITY.md"
# The documents the README links to (upgrading, fleet, storage failures, ...).
install -d -m 0755 "$doc/docs"
install -m 0644 docs/*.md "$doc/docs/"
install -D -m 0644 LICENSE.txt "$doc/LICENSE.txt"
install -D -m 0644 "$bundle/copyright" "$doc/copyright"
install -D -m 0644 "$out/man/scratch_manager.8" "$root/usr/share/man/man8/scratch_manager.8"
for f in "$here"/slurm/*.sh; do
  [[ -e $f ]] && install -D -m 0755 "$f" "$root/usr/share/scratch_manager/slurm/${f##*/}"
done
# The job_submit.lua that turns --comment datasets:... into --prefer=ds_... (slurm_node), for slurmctld's host to take.
install -D -m 0644 "$here/slurm/job_submit.lua" "$root/usr/share/scratch_manager/slurm/job_submit.lua"
# Prometheus alerting rules and the Grafana dashboard, for the monitoring hosts to take.
for f in "$here"/prometheus/*.yml "$here"/grafana/*.json; do
  rel=${f#"$here"/}
  install -D -m 0644 "$f" "$root/usr/share/scratch_manager/$rel"
done
gzip -9n "$root/usr/share/man/man8/scratch_manager.8"
# A native package's changelog: one entry for this build.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  # Epoch 1 (control.in): a package of the original named scratch-manager, whatever its version, is older than this one.
  echo "scratch-manager (1:$pkgversion) unstable; urgency=medium"
  echo
  echo "  * scratch_manager $version, built from commit $commit."
  echo
  echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$doc/changelog"
gzip -9n "$doc/changelog"
install -D -m 0644 "$here/deb/lintian-overrides" "$root/usr/share/lintian/overrides/scratch-manager"

mkdir -p "$root/DEBIAN"
install -m 0755 "$here/deb/postinst" "$here/deb/prerm" "$here/deb/postrm" "$root/DEBIAN/"
install -m 0644 "$here/deb/conffiles" "$root/DEBIAN/conffiles"
find "$root" -path "$root/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
find "$root" -path "$root/DEBIAN" -prune -o -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@DEB_VERSION@|$pkgversion|" -e "s|@MAINTAINER@|${maintainer//[|&\\]/}|" -e "s|@INSTALLED_SIZE@|$installed_size|" \
  "$here/deb/control.in" >"$root/DEBIAN/control"
deb="$out/scratch-manager_${pkgversion}_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "package: $deb"

# ---- .rpm -------------------------------------------------------------------
if [[ -z ${SM_SKIP_RPM:-} ]]; then
  topdir="$out/rpm"
  mkdir -p "$topdir"/{SOURCES,SPECS,BUILD,BUILDROOT,RPMS,SRPMS}
  cp "$bundle/scratch_manager.mjs" "$here/scratch_manager" scratch_manager.service scratch_manager.conf \
    "$out/man/scratch_manager.8" README.md SECURITY.md LICENSE.txt "$bundle/THIRD-PARTY-LICENSES.txt" "$topdir/SOURCES/"
  tar -C "$here" -cf "$topdir/SOURCES/share.tar" slurm prometheus grafana
  tar -cf "$topdir/SOURCES/docs.tar" docs
  sed -e "s|@RPM_VERSION@|$pkgversion|" -e "s|@LICENSE@|$(cat "$bundle/license-expression")|" \
    "$here/rpm/scratch-manager.spec.in" >"$topdir/SPECS/scratch-manager.spec"
  # --nodeps: the build host's rpm database is empty on Debian; the spec has no
  # build dependencies anyway. use_source_date_epoch_as_buildtime: reproducible.
  rpmbuild -bb --nodeps --quiet \
    --define "_topdir $topdir" \
    --define "_build_id_links none" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    "$topdir/SPECS/scratch-manager.spec" >"$topdir/rpmbuild.log" 2>&1 || {
    cat "$topdir/rpmbuild.log" >&2
    die "rpmbuild failed"
  }
  rpmfile=$(find "$topdir/RPMS" -name '*.rpm' -print -quit)
  [[ -n $rpmfile ]] || die "rpmbuild made no .rpm"
  mv "$rpmfile" "$out/"
  echo "package: $out/${rpmfile##*/}"
fi
