#!/usr/bin/env bash
# indent.sh [--check]: PostgreSQL's pgindent over all of aggr's C (the
# extension, the consumers, the two programs and common/), with the
# pg_bsd_indent and typedefs.list of the cached PostgreSQL 18 tree
# (tools/pg18.sh) plus aggr's own typedefs and those of the libraries it uses.
# make indent rewrites the files; --check (make test) prints the diff and
# fails when a file is not indented.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
pgsrc=$(bash tools/pg18.sh --srcdir)
bash tools/pg18.sh >/dev/null    # builds the tree, pg_bsd_indent included, if not cached
indent=$pgsrc/src/tools/pg_bsd_indent/pg_bsd_indent
[ -x "$indent" ] || { echo "indent.sh: $indent is not built" >&2; exit 1; }

mapfile -t files < <(find extension bgworker sidecar publisher common -name '*.[ch]' | sort)
typedefs=$(mktemp)
trap 'rm -f "$typedefs"' EXIT
{
    cat "$pgsrc/src/tools/pgindent/typedefs.list"
    # aggr's own: "} Name;" closing a typedef, "typedef ... Name;", "typedef ... (*Name)(...)"
    grep -ohE '^\}[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' "${files[@]}" | grep -oE '[A-Za-z_][A-Za-z0-9_]*' || true
    grep -hE '^typedef[^{]*;' "${files[@]}" | sed -nE 's/.*\(\*[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)\).*/\1/p; t; s/.*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*;.*/\1/p' || true
    # the libraries': hiredis, libcurl, libmicrohttpd, zlib, pthreads
    printf '%s\n' redisContext redisReply CURL CURLM CURLcode CURLMcode CURLMsg \
        MHD_AccessHandlerCallback z_stream pthread_t pthread_mutex_t pthread_cond_t
} | sort -u > "$typedefs"

args=(--indent="$indent" --typedefs="$typedefs")
if [ "${1:-}" = --check ]; then
    if ! perl "$pgsrc/src/tools/pgindent/pgindent" "${args[@]}" --check --diff "${files[@]}"; then
        echo "indent.sh: these files are not pgindent-clean; run make indent" >&2
        exit 1
    fi
    echo "pgindent: ${#files[@]} files clean"
else
    perl "$pgsrc/src/tools/pgindent/pgindent" "${args[@]}" "${files[@]}"
fi
