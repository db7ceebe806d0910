#!/usr/bin/env bash
# Builds the berth-client image with no registry access:
#   FROM scratch + the berth binary + the shared libraries `ldd` lists for it
#   (same paths) + the dynamic loader + fusermount3 (setuid root) and its
#   libraries + /etc/passwd, /etc/group (user berth, 1000:1000),
#   /etc/fuse.conf (user_allow_other), /etc/nsswitch.conf.
#
# Usage: docker/build-image.sh [--bin PATH] [--tag NAME:TAG]
#   --bin PATH   use this berth binary (default: build target/release/berth)
#   --tag T      image name (default: berth-client:<version of the binary>)
# Prints the image name on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bin=""
tag=""

die() { echo "build-image: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=${2:?--bin needs a path}; shift 2 ;;
        --tag) tag=${2:?--tag needs a name}; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is not installed (Debian: libc-bin)"

if [ -z "$bin" ]; then
    (cd "$repo" && cargo build --release -p berth --bin berth) >&2
    bin=$repo/target/release/berth
fi
[ -x "$bin" ] || die "$bin is not an executable"
version=$("$bin" --version | awk '{print $2}')
[ -n "$version" ] || die "cannot read the version of $bin"
tag=${tag:-berth-client:$version}

stage=$(mktemp -d "${TMPDIR:-/tmp}/berth-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/rootfs
mkdir -p "$root"

# Copies FILE to the same path under the image root (following symlinks).
copy_file() {
    local src=$1 mode=$2
    install -D -m "$mode" "$(readlink -f "$src")" "$root$src"
}

# Copies a program to DEST in the image with every library ldd lists.
copy_program() {
    local src=$1 dest=$2 mode=$3 line lib
    install -D -m "$mode" "$(readlink -f "$src")" "$root$dest"
    if ! ldd "$src" >"$stage/ldd.txt" 2>&1; then
        grep -q "not a dynamic executable" "$stage/ldd.txt" && return 0
        die "ldd $src failed: $(cat "$stage/ldd.txt")"
    fi
    while read -r line; do
        case "$line" in
            *"not found"*) die "$src needs a library that is missing: $line" ;;
            *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
            /*) lib=${line%% (*} ;;      # the dynamic loader
            *) continue ;;               # linux-vdso and friends
        esac
        [ -e "$root$lib" ] || copy_file "$lib" 0755
    done <"$stage/ldd.txt"
}

copy_program "$bin" /usr/local/bin/berth 0755

if fusermount=$(command -v fusermount3); then
    # setuid root: the mount process runs as the application's uid.
    copy_program "$fusermount" /usr/bin/fusermount3 4755
else
    echo "build-image: warning: fusermount3 not found (Debian: apt-get install fuse3);" \
         "the image cannot mount for a non-root application" >&2
fi

mkdir -p "$root/etc" "$root/berth" "$root/run" "$root/tmp" "$root/home" "$stage/app/home/berth"
chmod 1777 "$root/tmp"
chmod 0755 "$root/home" "$stage/app/home/berth"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
berth:x:1000:1000:berth application:/home/berth:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
berth:x:1000:
nogroup:x:65534:
GROUP
echo "user_allow_other" >"$root/etc/fuse.conf"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod 0644 "$root"/etc/*

# Owners are set in the archive, so building needs no root.
ctx=$stage/context
mkdir -p "$ctx"
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$ctx/rootfs.tar" .
tar --numeric-owner --owner=1000 --group=1000 -C "$stage/app" -rf "$ctx/rootfs.tar" ./home/berth
cp "$here/berth-client.Dockerfile" "$ctx/Dockerfile"

# The classic builder needs nothing from a registry for FROM scratch.
if ! DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$ctx" >"$stage/build.log" 2>&1; then
    cat "$stage/build.log" >&2
    die "docker build of $tag failed"
fi
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "build-image: built $tag ($((size / 1024 / 1024)) MiB)" >&2
echo "$tag"
