#!/usr/bin/env bash
# citus.sh: builds Citus from ../shared/citus/ against one PostgreSQL (default
# Debian's 15) and installs it there; the build is cached, keyed by the Citus
# and the server's versions, so a second run only reinstalls (a copy) when
# the installed citus.so is not that build.  Prints the Citus version.
#
#   bash tools/citus.sh [PG_CONFIG]
#
# Cache: $AGGR_CACHE (default /var/cache/aggr, or ~/.cache/aggr for a non-root
# user when /var/cache/aggr holds nothing).  Installing needs root (or a
# PostgreSQL the user owns); a non-root run over a matching install only checks.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
pg_config=${1:-/usr/lib/postgresql/15/bin/pg_config}
shared=${AGGR_SHARED:-$src/../shared}/citus
major=$("$pg_config" --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')
# Citus 13 supports PostgreSQL 15-17; 14 supports 16-18
if [ "$major" -ge 18 ]; then citus=14.0.1; else citus=13.2.2; fi
tarball=$shared/citus-$citus.tar.gz
[ -f "$tarball" ] || { echo "aggr: $tarball is missing" >&2; exit 1; }
if [ "$(id -u)" -eq 0 ] || [ -d /var/cache/aggr/src ]; then
    cache=${AGGR_CACHE:-/var/cache/aggr}
else
    cache=${AGGR_CACHE:-$HOME/.cache/aggr}
fi
key=citus-$citus-pg$("$pg_config" --version | sed 's/^PostgreSQL //; s/ .*//')-$(printf '%s' "$pg_config" | cksum | cut -d' ' -f1)
tree=$cache/$key/citus-$citus
log=$cache/$key/build.log

if [ ! -f "$cache/$key/done" ]; then
    mkdir -p "$cache/$key"
    echo "aggr: building Citus $citus for $("$pg_config" --version) (log: $log)" >&2
    started=$(date +%s)
    unset MAKELEVEL MAKEFLAGS MFLAGS
    rm -rf "$tree"
    tar -C "$cache/$key" -xzf "$tarball"
    cd "$tree"
    # 15.20's headers export have_createdb_privilege(), which 13.2.2 redefines
    if [ "$citus" = 13.2.2 ] &&
        grep -q have_createdb_privilege "$("$pg_config" --includedir-server)/commands/dbcommands.h"; then
        patch -s -p1 < "$shared/citus-13.2.2-pg15.20.diff"
    fi
    { ./configure --without-libcurl PG_CONFIG="$pg_config" && make -j2 -s; } >"$log" 2>&1 ||
        { tail -40 "$log" >&2; exit 1; }
    touch "$cache/$key/done"
    echo "aggr: Citus $citus built in $(( $(date +%s) - started )) s" >&2
fi

installed=$("$pg_config" --pkglibdir)/citus.so
if ! cmp -s "$tree/src/backend/distributed/citus.so" "$installed"; then
    if [ ! -w "$("$pg_config" --pkglibdir)" ]; then
        echo "aggr: Citus $citus is not installed into $("$pg_config" --pkglibdir); run as root once" >&2
        exit 1
    fi
    (unset MAKELEVEL MAKEFLAGS MFLAGS; make -s -C "$tree" install) >>"$log" 2>&1 ||
        { tail -20 "$log" >&2; exit 1; }
fi
echo "$citus"
