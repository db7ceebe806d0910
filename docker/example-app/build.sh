#!/usr/bin/env bash
# Builds the example application image FROM the berth-client image:
# compiles notes.rs (standard library only) with rustc and adds it.
#
# Usage: docker/example-app/build.sh [--base IMAGE] [--tag NAME:TAG]
#   --base IMAGE  the berth-client image (default: berth-client:<workspace version>)
#   --tag T       image name (default: berth-example:<version of the base tag>)
# Prints the image name on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
base=""
tag=""

die() { echo "example-app: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --base) base=${2:?--base needs an image}; shift 2 ;;
        --tag) tag=${2:?--tag needs a name}; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

if [ -z "$base" ]; then
    version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
    base=berth-client:$version
fi
tag=${tag:-berth-example:${base##*:}}
docker image inspect "$base" >/dev/null 2>&1 || die "no image $base: run docker/build-image.sh first"
command -v rustc >/dev/null || die "rustc is not installed"

ctx=$(mktemp -d "${TMPDIR:-/tmp}/berth-example.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
rustc --edition 2021 -O -C strip=symbols -o "$ctx/notes" "$here/notes.rs"
cp "$here/Dockerfile" "$ctx/Dockerfile"
if ! DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE=$base" -t "$tag" "$ctx" \
        >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2
    die "docker build of $tag failed"
fi
# The program must run on the base image's libraries alone.
docker run --rm --entrypoint /usr/local/bin/notes "$tag" --version >/dev/null \
    || die "notes does not run in $tag (missing libraries?)"
echo "example-app: built $tag" >&2
echo "$tag"
