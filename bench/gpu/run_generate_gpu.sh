#!/bin/bash
# Builds the generation path of llt against the GPU machine's PyTorch LibTorch (2.x, CUDA) by
# hand (no CMake/apt there) and measures bench_generate on the GPU. Headers for CLI11 and
# nlohmann-json travel in .devinc/ (copied from this machine's /usr/include). Output under $OUT.
set -u
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
TORCH_DIR=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__))")
python3 -c "import torch;print('torch', torch.__version__, 'cuda', torch.version.cuda)"
ABI=$(python3 -c "import torch;print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
FLAGS="-std=c++17 -O2 -fPIC -D_GLIBCXX_USE_CXX11_ABI=$ABI -Ilib -isystem .devinc \
  -isystem $TORCH_DIR/include -isystem $TORCH_DIR/include/torch/csrc/api/include"
OBJ=/tmp/llt-obj; mkdir -p $OBJ
files="errors io model tensor_file safetensors pth weights weight_names runtime generate"
for f in $files; do
  (g++ $FLAGS -c lib/llt/$f.cpp -o $OBJ/$f.o 2>$OBJ/$f.log || { echo "FAILED $f"; head -30 $OBJ/$f.log; }) &
done
g++ $FLAGS -c bench/bench_generate.cpp -o $OBJ/bench_generate.o 2>$OBJ/bench.log || { echo "FAILED bench"; head -30 $OBJ/bench.log; } &
wait
g++ $OBJ/*.o -o $OBJ/bench_generate -L$TORCH_DIR/lib -Wl,--no-as-needed -ltorch_cuda \
  -Wl,--as-needed -ltorch -ltorch_cpu -lc10 -lc10_cuda -Wl,-rpath,$TORCH_DIR/lib || exit 2
B="$OBJ/bench_generate --device cuda"
S=assets/models/stories260K/stories260K.bin
for d in fp32 bf16 fp16; do $B --model $S --dtype $d --repeats 3 | tee -a $OUT/generate_gpu.jsonl; done
for d in bf16 fp16; do
  $B --preset llama2_7b --n-layers 1 --dtype $d --repeats 2 | tee -a $OUT/generate_gpu.jsonl
done
$B --preset llama2_7b --n-layers 1 --dtype bf16 --batch 8 --kv-cache on | tee -a $OUT/generate_gpu.jsonl
