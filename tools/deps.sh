#!/usr/bin/env bash
# deps.sh: installs the Debian packages aggr needs to build, test, demo and
# benchmark, when run as root and something is missing.  Sourced or run.
AGGR_PACKAGES=(
    make gcc pkg-config perl curl procps
    postgresql-15 postgresql-server-dev-15 libpq-dev
    redis-server libhiredis-dev
    libmicrohttpd-dev libcurl4-openssl-dev
    libipc-run-perl valgrind python3-yaml python3-jsonschema gnuplot-nox
    clang-14 libclang-rt-14-dev
    bison flex dpkg-dev zlib1g-dev
    # Citus (tools/citus.sh)
    autoconf liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libxslt1-dev
    libpam0g-dev libssl-dev libreadline-dev
)

aggr_install_deps() {
    local missing=() p
    for p in "${AGGR_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "aggr: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
        return 1
    fi
    echo "aggr: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    aggr_install_deps
fi
