#!/usr/bin/env bash
# Installs every Debian 12 package llt's build, tests and demo need, and the packages named as
# arguments (scripts/fuzz.sh names clang's). Run as root.
# Idempotent: when everything is present it only checks (no apt-get update), in about a second.
set -euo pipefail

packages=(
  # build
  g++ cmake ninja-build pkg-config ccache git
  # scripts/build-cuda.sh unpacks the CUDA LibTorch wheels
  unzip
  # scripts/build-cuda.sh and scripts/client-venv.sh fetch their pinned wheels with pip
  python3-pip
  # libraries
  libtorch-dev libsentencepiece-dev libhdf5-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  # c10d's Gloo headers: data-parallel CPU runs (lib/llt/distributed); without them, 1 process
  libgloo-dev
  # an optimized BLAS for libtorch at run time (~30x faster fp32 matmul than the reference BLAS)
  libopenblas0-openmp
  # llt-report's plots (gnuplot's pngcairo terminal; fonts come with libcairo2's fontconfig)
  gnuplot-nox
  # fixtures, goldens and the Python side of the benchmarks (never on the run-time path)
  python3-torch python3-sentencepiece python3-h5py python3-numpy
  # a real one-node SLURM for the sbatch templates' tests (tests/slurm/)
  slurmctld slurmd slurm-client munge
)
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages (${missing[*]}); run this script as root" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
