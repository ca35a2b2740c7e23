#!/usr/bin/env bash
# Builds every llt tool, test and bench against the official CUDA LibTorch 2.11.0 (PyPI's torch
# wheel, the cu130 build) with CUDA and NCCL, into build-cuda/. The wheels pinned in
# scripts/cuda-wheels.txt (sha256 each) are fetched once into a cache outside the clone, keyed by
# sha256, and unpacked side by side into one site-packages-shaped folder there, so the libraries'
# $ORIGIN-relative RUNPATHs (torch/lib -> ../../nvidia/*/lib) resolve. Extra arguments go to
# `cmake --build` (e.g. --target llt-finetune).
#
# `--fetch-only`: only fetch and unpack the wheels (no nvcc needed) and print the unpacked
# folder's path (scripts/client-venv.sh uses its torch).
#
# Exit 77 when this machine cannot make the build (no nvcc, no pip, PyPI out of reach): the
# caller decides whether that is a skip (a user's machine) or a failure (CI: LLT_REQUIRE_CUDA=1).
#   LLT_WHEEL_CACHE     the cache (default /var/cache/llt/wheels; ~2.5 GB of wheels, ~6 GB unpacked)
#   LLT_CUDA_BUILD_DIR  the build folder (default build-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=scripts/cuda-wheels.txt
cache=${LLT_WHEEL_CACHE:-/var/cache/llt/wheels}
build_dir=${LLT_CUDA_BUILD_DIR:-build-cuda}

fetch_only=0
if [[ ${1:-} == --fetch-only ]]; then
  fetch_only=1
  shift
fi

unavailable() {
  if ((fetch_only)); then
    echo "build-cuda: $*; the CUDA wheels are not fetched on this machine" >&2
  else
    echo "build-cuda: $*; the CUDA build is not made on this machine" >&2
  fi
  exit 77
}

if ((!fetch_only)); then
  nvcc=$(command -v nvcc || true)
  [[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
  [[ -n $nvcc ]] || unavailable "no nvcc (the CUDA toolkit) on PATH or in /usr/local/cuda"
  cuda_root=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
fi
command -v unzip >/dev/null || unavailable "no unzip (scripts/install-deps.sh installs it)"
pip=()
for py in python3 /usr/bin/python3; do
  if command -v "$py" >/dev/null && "$py" -m pip --version >/dev/null 2>&1; then
    pip=("$py" -m pip)
    break
  fi
done

# name==version and sha256 of every pinned wheel.
mapfile -t pins < <(sed -n 's/^\([^# ][^ ]*\) --hash=sha256:\([0-9a-f]\{64\}\)$/\1 \2/p' "$requirements")
((${#pins[@]} > 0)) || { echo "build-cuda: $requirements: no pinned wheels" >&2; exit 1; }

wheel_of() { # the cached wheel file of a sha256, or nothing
  compgen -G "$cache/$1/*.whl" | head -n 1 || true
}

# 1. Fetch what the cache lacks (pip checks every hash), then file each wheel under its sha256.
missing=()
for pin in "${pins[@]}"; do
  [[ -n $(wheel_of "${pin#* }") ]] || missing+=("${pin% *} --hash=sha256:${pin#* }")
done
if ((${#missing[@]} > 0)); then
  ((${#pip[@]} > 0)) || unavailable "no pip to fetch the pinned wheels"
  mkdir -p "$cache"
  incoming=$(mktemp -d "$cache/incoming.XXXXXX")
  trap 'rm -rf "$incoming"' EXIT
  printf '%s\n' "${missing[@]}" >"$incoming/requirements.txt"
  platforms=()
  for p in manylinux_2_28 manylinux_2_27 manylinux_2_25 manylinux_2_24 manylinux_2_18 \
    manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
  done
  echo "build-cuda: fetching ${#missing[@]} pinned wheels into $cache"
  "${pip[@]}" download --quiet --no-deps --require-hashes --only-binary=:all: \
    --implementation cp --python-version 3.11 "${platforms[@]}" \
    -d "$incoming/wheels" -r "$incoming/requirements.txt" ||
    unavailable "pip could not fetch the pinned wheels (is PyPI reachable?)"
  for f in "$incoming"/wheels/*.whl; do
    sha=$(sha256sum "$f" | cut -c1-64)
    mkdir -p "$cache/$sha"
    mv "$f" "$cache/$sha/"
  done
  rm -rf "$incoming"
  trap - EXIT
fi

# 2. Unpack once per pin set, into a folder made under a temporary name and renamed when whole.
#    Only what a C++ build and its run time use: torch's lib/include/share, the nvidia libraries.
key=$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)
site=$cache/site-$key
if [[ ! -f $site/.complete ]]; then
  echo "build-cuda: unpacking into $site"
  rm -rf "$site.partial"
  mkdir -p "$site.partial"
  for pin in "${pins[@]}"; do
    sha=${pin#* }
    whl=$(wheel_of "$sha")
    [[ $(sha256sum "$whl" | cut -c1-64) == "$sha" ]] ||
      { echo "build-cuda: $whl: sha256 differs from $requirements" >&2; exit 1; }
    case ${pin%%==*} in
      torch) unzip -q -o "$whl" 'torch/lib/*' 'torch/include/*' 'torch/share/*' 'torch/version.py' \
        -d "$site.partial" ;;
      *) unzip -q -o "$whl" -x '*.dist-info/*' -d "$site.partial" ;;
    esac
  done
  touch "$site.partial/.complete"
  rm -rf "$site"
  mv "$site.partial" "$site"
fi

if ((fetch_only)); then
  echo "$site"
  exit 0
fi

# 3. Configure with the pinned CMake (Debian's 3.25 predates CUDA 13's header layout) and build.
#    nccl.h is the nvidia-nccl wheel's, the NCCL libtorch_cuda.so loads. Gloo: the wheel ships no
#    gloo headers and Debian's are another gloo than the one inside libtorch_cpu, so this build has
#    no Gloo (CPU data parallelism is tested in the Debian build).
cmake=$site/cmake/data/bin/cmake
"$cmake" -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$site/torch" -DCUDAToolkit_ROOT="$cuda_root" \
  -DLLT_NCCL_INCLUDE_DIR="$site/nvidia/nccl/include" -DLLT_USE_GLOO=OFF >/dev/null
"$cmake" --build "$build_dir" -j "$(nproc)" "$@"

# 4. One OpenMP runtime per process: the wheel's libgomp, which libtorch_cpu.so loads. The tools
#    link libllt.so (llt-finetune's launcher dlopens it), so its closure is what a process gets.
gomps=$(ldd "$build_dir/bin/libllt.so" | grep -c 'libgomp' || true)
if [[ $gomps -ne 1 ]] || ! ldd "$build_dir/bin/libllt.so" | grep -q "$site/torch/lib/libgomp"; then
  echo "build-cuda: libllt.so does not load exactly the wheel's libgomp:" >&2
  ldd "$build_dir/bin/libllt.so" | grep -E 'gomp|not found' >&2 || true
  exit 2
fi
echo "build-cuda: $build_dir built against $(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$site/torch/version.py") ($site)"
