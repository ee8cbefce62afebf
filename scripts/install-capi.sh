#!/usr/bin/env bash
# install-capi.sh: build libmemseal (the C library in capi/) and install it
# under a prefix.
#
# Usage: scripts/install-capi.sh [--release] [--no-build] PREFIX
#   --release   build and install the optimised library (default: debug)
#   --no-build  install what cargo already built
#
# Installs, with DESTDIR prepended when it is set (for packaging):
#   PREFIX/lib/libmemseal.so.VERSION   the shared library, soname libmemseal.so.MAJOR
#   PREFIX/lib/libmemseal.so.MAJOR     symlinks to it
#   PREFIX/lib/libmemseal.so
#   PREFIX/lib/libmemseal.a            the static library
#   PREFIX/include/memseal.h           the C header (generated, kept in capi/include)
#   PREFIX/include/memseal.hpp         the C++ RAII wrapper
#   PREFIX/lib/pkgconfig/memseal.pc    for `pkg-config --cflags --libs memseal`
#
# Environment: LIBDIR (default PREFIX/lib), INCLUDEDIR (default
# PREFIX/include), DESTDIR, CARGO (default cargo).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

profile=debug
build=1
prefix=""
for arg in "$@"; do
    case $arg in
    --release) profile=release ;;
    --no-build) build=0 ;;
    -h | --help)
        sed -n '2,/^$/{/^$/q; s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    -*)
        echo "install-capi: unknown option $arg (try --help)" >&2
        exit 2
        ;;
    *)
        [[ -z $prefix ]] || {
            echo "install-capi: one PREFIX only (try --help)" >&2
            exit 2
        }
        prefix=$arg
        ;;
    esac
done
[[ -n $prefix ]] || {
    echo "install-capi: missing PREFIX (try --help)" >&2
    exit 2
}
[[ $prefix == /* ]] || prefix=$PWD/$prefix
libdir=${LIBDIR:-$prefix/lib}
includedir=${INCLUDEDIR:-$prefix/include}
dest=${DESTDIR:-}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
major=${version%%.*}
[[ -n $version ]] || {
    echo "install-capi: cannot read the version from $repo/Cargo.toml" >&2
    exit 1
}

if ((build)); then
    cargo_flags=(--package memseal-capi --lib --quiet)
    [[ $profile == release ]] && cargo_flags+=(--release)
    (cd "$repo" && "${CARGO:-cargo}" build "${cargo_flags[@]}")
fi
target_dir=$(cd "$repo" && "${CARGO:-cargo}" metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
built=$target_dir/$profile
for file in libmemseal_capi.so libmemseal_capi.a; do
    [[ -f $built/$file ]] || {
        echo "install-capi: $built/$file is not built (run without --no-build)" >&2
        exit 1
    }
done

install -d "$dest$libdir" "$dest$libdir/pkgconfig" "$dest$includedir"
install -m 0755 "$built/libmemseal_capi.so" "$dest$libdir/libmemseal.so.$version"
ln -sfn "libmemseal.so.$version" "$dest$libdir/libmemseal.so.$major"
ln -sfn "libmemseal.so.$major" "$dest$libdir/libmemseal.so"
install -m 0644 "$built/libmemseal_capi.a" "$dest$libdir/libmemseal.a"
install -m 0644 "$repo/capi/include/memseal.h" "$repo/capi/include/memseal.hpp" "$dest$includedir/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" \
    -e "s|@VERSION@|$version|" "$repo/capi/memseal.pc.in" >"$dest$libdir/pkgconfig/memseal.pc"
chmod 0644 "$dest$libdir/pkgconfig/memseal.pc"
echo "install-capi: libmemseal $version ($profile) installed under $dest$prefix"
