#!/usr/bin/env bash
# Makes .gpu-kit/: what scripts/gpu-check.sh needs on a GPU machine that has CMake, ninja, nvcc
# and a Python with torch but nothing else of llt's build (and no apt there). Debian 12 packages,
# `apt-get download`ed and unpacked with `dpkg -x` into .gpu-kit/root (git-ignored; it travels
# with the tree, which together must stay under 64 MiB):
#   - headers, link names and CMake configs: HDF5 (C API), SentencePiece, CLI11, nlohmann-json,
#     GoogleTest (static libraries);
#   - the run-time libraries of libhdf5_serial and libsentencepiece (their ldd closure here),
#     less glibc, libstdc++ and libgcc, which the GPU machine's own must provide (Debian 12's
#     need glibc >= 2.36 and GCC 12's libstdc++: gpu-check.sh checks both first).
# Idempotent: an existing kit made from the same package list is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.gpu-kit
packages=(
  # build
  libhdf5-dev libsentencepiece-dev libcli11-dev nlohmann-json3-dev libgtest-dev
  # run time: libhdf5_serial.so.103 and libsentencepiece.so.0 and what they load
  libhdf5-103-1 libsentencepiece0 libaec0 libsz2 zlib1g libcurl4 libbrotli1 libnghttp2-14
  libidn2-0 libunistring2 libpsl5 librtmp1 libssh2-1 libssl3 libzstd1 libgssapi-krb5-2
  libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2 libldap-2.5-0 libsasl2-2
  libgnutls30 libgmp10 libhogweed6 libnettle8 libp11-kit0 libffi8 libtasn1-6
)
stamp=$(printf '%s\n' "${packages[@]}" | sha256sum | cut -c1-16)
if [[ -f $kit/.complete && $(cat "$kit/.complete") == "$stamp" ]]; then
  echo "gpu-kit: $kit is up to date ($(du -sh "$kit" | cut -f1))"
  exit 0
fi
command -v apt-get >/dev/null || { echo "gpu-kit: needs apt-get (Debian 12)" >&2; exit 1; }
rm -rf "$kit.partial"
mkdir -p "$kit.partial/debs" "$kit.partial/root"
(cd "$kit.partial/debs" && apt-get download -q "${packages[@]}" >/dev/null) || {
  apt-get update -q >/dev/null
  (cd "$kit.partial/debs" && apt-get download -q "${packages[@]}" >/dev/null)
}
for deb in "$kit.partial"/debs/*.deb; do dpkg -x "$deb" "$kit.partial/root"; done
# What no build or run needs: documentation, HDF5's static and high-level/Fortran/C++ link names.
rm -rf "$kit.partial"/root/usr/share/{doc,man,lintian,bug} "$kit.partial/debs"
find "$kit.partial/root" \( -name '*.a' ! -name 'libgtest*.a' \) -delete
find "$kit.partial/root" \( -name '*hdf5*hl*' -o -name '*hdf5*cpp*' -o -name '*hdf5*fortran*' \
  -o -name '*.mod' -o -path '*/bin/*' \) -delete
find "$kit.partial/root" -xtype l -delete  # links left dangling by the above
echo "$stamp" >"$kit.partial/.complete"
rm -rf "$kit"
mv "$kit.partial" "$kit"
echo "gpu-kit: $kit made from ${#packages[@]} packages ($(du -sh "$kit" | cut -f1))"
