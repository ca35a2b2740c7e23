#!/usr/bin/env bash
# Builds the Python environment in which llt's outputs are checked with the programs users load
# them with (transformers, peft, safetensors; tests/test_export.cpp's client tests): a venv of
# Debian's /usr/bin/python3 at DIR (default build/client-venv) with the packages pinned, with
# their sha256, in scripts/client-requirements.txt.
#
# torch is not installed a second time: the venv uses the torch 2.11.0 wheel that
# scripts/build-cuda.sh fetches (scripts/cuda-wheels.txt) and unpacks into
# $LLT_WHEEL_CACHE/site-<key>/ (fetched and unpacked now with `build-cuda.sh --fetch-only` if
# that was not done yet). That folder holds only torch's libraries, headers and CMake files (the
# C++ build's part), so torch's Python files (about 100 MB) are unpacked from the same cached
# wheel into the venv, with its lib/, include/ and share/ linked to the site folder's, and a
# .pth file puts the site folder (the nvidia-* libraries torch loads) on sys.path.
#
# Re-running is a no-op once DIR/.complete names the current pins. Exits 77 (a skip for CTest)
# where the venv cannot be made here (no pip, PyPI out of reach, no CUDA wheels), with the reason
# on stderr and in DIR.skip.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/client-venv}
requirements=scripts/client-requirements.txt
cache=${LLT_WHEEL_CACHE:-/var/cache/llt/wheels}
python=/usr/bin/python3
key=$(cat "$requirements" scripts/cuda-wheels.txt | sha256sum | cut -c1-16)

if [[ -f $dir/.complete && $(cat "$dir/.complete") == "$key" ]]; then
  exit 0
fi
rm -f "$dir.skip"
unavailable() {
  echo "client-venv: $*; the client checks are skipped" | tee "$dir.skip" >&2
  exit 77
}
started=$SECONDS

[[ -x $python ]] || unavailable "no $python"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ $version == 3.11 ]] || unavailable "$python is Python $version; the pinned wheels are CPython 3.11's"
"$python" -c 'import venv' 2>/dev/null || unavailable "$python has no venv module"
pip=()
for py in "$python" python3; do
  if command -v "$py" >/dev/null && "$py" -m pip --version >/dev/null 2>&1; then
    pip=("$py" -m pip)
    break
  fi
done
((${#pip[@]} > 0)) || unavailable "no pip (Debian: python3-pip)"

# torch: the site folder of the CUDA build's wheels, and the torch wheel itself.
site_out=$(LLT_WHEEL_CACHE=$cache scripts/build-cuda.sh --fetch-only) ||
  unavailable "the CUDA torch wheels could not be fetched (scripts/build-cuda.sh --fetch-only)"
site=${site_out##*$'\n'}
torch_sha=$(sed -n 's/^torch==[^ ]* --hash=sha256:\([0-9a-f]\{64\}\)$/\1/p' scripts/cuda-wheels.txt)
torch_wheel=$(compgen -G "$cache/$torch_sha/torch-*.whl" | head -n 1 || true)
[[ -n $torch_wheel && -d $site/torch/lib ]] ||
  unavailable "no torch wheel under $cache/$torch_sha or no $site/torch/lib"

# The venv, made in place and marked complete only at the end.
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
"$python" -m venv --without-pip "$dir"
packages=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
unzip -q "$torch_wheel" -x 'torch/lib/*' 'torch/include/*' 'torch/share/*' -d "$packages"
for part in lib include share; do
  ln -s "$site/torch/$part" "$packages/torch/$part"
done
echo "$site" >"$packages/llt-cuda-site.pth"
echo "client-venv: installing $(grep -c -- '--hash=' "$requirements") pinned packages into $dir"
"${pip[@]}" --python "$dir/bin/python" install --quiet --no-deps --require-hashes \
  --only-binary=:all: --no-compile -r "$requirements" ||
  { rm -rf "$dir"; unavailable "pip could not install $requirements (is PyPI reachable?)"; }
"$dir/bin/python" -c 'import torch, transformers, peft, safetensors' ||
  { echo "client-venv: the packages do not import" >&2; exit 1; }
echo "$key" >"$dir/.complete"
echo "client-venv: $dir ready in $((SECONDS - started)) s (torch $("$dir/bin/python" -c \
  'import torch; print(torch.__version__)') from $site)"
