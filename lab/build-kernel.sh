#!/usr/bin/env bash
# Build the lab guest kernel from Debian's linux-source-6.12 with lab/kernel.config
# merged over x86_64_defconfig. The bzImage is cached under ~/.cache/viommu/kernel/<key>/,
# keyed by the source package version and the config fragment, so a rebuild happens
# only when one of them changes. Prints the bzImage path on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tarball=/usr/src/linux-source-6.12.tar.xz
[ -f "$tarball" ] || { echo "build-kernel: $tarball missing (apt-get install -t bookworm-backports linux-source-6.12)" >&2; exit 2; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$(printf '%s\n' "$srcver" | cat - "$here/kernel.config" | sha256sum | cut -c1-16)
cache=${VIOMMU_CACHE:-$HOME/.cache/viommu}/kernel/$key
if [ -f "$cache/bzImage" ]; then echo "$cache/bzImage"; exit 0; fi
work=${VIOMMU_CACHE:-$HOME/.cache/viommu}/build/$key
rm -rf "$work"; mkdir -p "$work"
echo "build-kernel: unpacking linux-source $srcver into $work" >&2
tar -xJf "$tarball" -C "$work" --strip-components=1
cd "$work"
make -s x86_64_defconfig >&2
scripts/kconfig/merge_config.sh -m .config "$here/kernel.config" >/dev/null
make -s olddefconfig >&2
# Every requested option must have survived olddefconfig (a dependency can drop one silently).
while read -r line; do
  case "$line" in
    CONFIG_*=y) grep -qx "$line" .config || { echo "build-kernel: $line did not stick" >&2; exit 2; } ;;
  esac
done < "$here/kernel.config"
start=$(date +%s)
make -s -j"$(nproc)" bzImage >&2
echo "build-kernel: built in $(( $(date +%s) - start )) s" >&2
mkdir -p "$cache"
cp arch/x86/boot/bzImage "$cache/bzImage"
cp .config "$cache/config"
cd / && rm -rf "$work"
echo "$cache/bzImage"
