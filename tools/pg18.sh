#!/usr/bin/env bash
# pg18.sh: builds PostgreSQL 18 with assertions from Debian's postgresql-18
# source package (suite sid) and caches it, keyed by version and build flags,
# so a second run only prints where it is.  Prints the install's pg_config.
#
#   bash tools/pg18.sh            build if needed, print PG_CONFIG
#   bash tools/pg18.sh --srcdir   print the cached source tree (pgindent lives there)
#
# Cache: $AGGR_CACHE (default /var/cache/aggr, or ~/.cache/aggr for a non-root
# user when /var/cache/aggr holds nothing).
# Needs root only to add the deb-src entry and install build packages once.
set -euo pipefail
flags="--enable-cassert --enable-debug --enable-tap-tests --without-icu --without-readline"
# (a non-root user reads root's cache when there is one: make test runs its
# suites, make indent included, as the user postgres)
if [ "$(id -u)" -eq 0 ] || [ -d /var/cache/aggr/src ]; then
    cache=${AGGR_CACHE:-/var/cache/aggr}
else
    cache=${AGGR_CACHE:-$HOME/.cache/aggr}
fi
# the newest cached upstream tarball of 18 (Debian's .orig.tar.bz2 is upstream's)
cached_tarball() {
    { ls "$cache"/src/postgresql-18_18.*.orig.tar.bz2 2>/dev/null || true; } | sort -V | tail -n 1
}

tarball=$(cached_tarball)
if [ -z "$tarball" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "aggr: the postgresql-18 source is not cached in $cache/src; run as root once" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    list=/etc/apt/sources.list.d/aggr-sid-src.sources
    if [ ! -f "$list" ]; then
        cat > "$list" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null
    mkdir -p "$cache/src"
    (cd "$cache/src" && apt-get source --download-only postgresql-18 >"$cache/src/download.log" 2>&1) ||
        { cat "$cache/src/download.log" >&2; exit 1; }
    tarball=$(cached_tarball)
    [ -n "$tarball" ] || { echo "aggr: apt-get source postgresql-18 gave no tarball" >&2; exit 1; }
fi
version=$(basename "$tarball" | sed 's/^postgresql-18_\(.*\)\.orig\.tar\.bz2$/\1/')
key=pg-$version-$(printf '%s' "$flags" | cksum | cut -d' ' -f1)
prefix=$cache/$key/install
srcdir=$cache/$key/postgresql-$version

if [ "${1:-}" = --srcdir ]; then
    echo "$srcdir"
    exit 0
fi
# contrib modules the tests use (t/047: amcheck), added to a cached build
# that lacks them; a few seconds
add_contrib() {
    [ -f "$prefix/share/postgresql/extension/amcheck.control" ] && return 0
    [ -w "$cache/$key" ] || { echo "aggr: $prefix lacks amcheck; run as root once" >&2; return 1; }
    (unset MAKELEVEL MAKEFLAGS MFLAGS; make -s -C "$srcdir/contrib/amcheck" install) >>"$cache/$key/build.log" 2>&1 ||
        { tail -20 "$cache/$key/build.log" >&2; return 1; }
}
if [ -x "$prefix/bin/pg_config" ] && [ -f "$cache/$key/done" ]; then
    add_contrib || exit 1
    echo "$prefix/bin/pg_config"
    exit 0
fi

log=$cache/$key/build.log
mkdir -p "$cache/$key"
echo "aggr: building PostgreSQL $version with assertions into $prefix (log: $log)" >&2
started=$(date +%s)

# Run from make test, this inherits the outer make's MAKELEVEL; PostgreSQL's
# makefiles build the generated headers only at level 0, so start afresh.
unset MAKELEVEL MAKEFLAGS MFLAGS
rm -rf "$srcdir" "$prefix"
tar -C "$cache/$key" -xjf "$tarball"
cd "$srcdir"
# shellcheck disable=SC2086
./configure --prefix="$prefix" $flags >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
if ! { make -j2 -s && make -s install && make -s -C src/test/isolation install &&
        make -s -C src/tools/pg_bsd_indent; } >>"$log" 2>&1; then
    tail -40 "$log" >&2
    exit 1
fi
touch "$cache/$key/done"
add_contrib || exit 1
echo "aggr: PostgreSQL $version built in $(( $(date +%s) - started )) s" >&2
echo "$prefix/bin/pg_config"
