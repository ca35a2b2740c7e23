"""llt-export folders as transformers loads them (run by tests/test_export.cpp in the client venv,
scripts/client-venv.sh, never with Debian's torch 1.13).

For each pair DIR LLT_LOGITS: LlamaForCausalLM.from_pretrained(DIR) in fp32 on the CPU, its
logits on the ids of LLT_LOGITS (a safetensors file holding "tokens" (B, T) int64 and "logits"
(B, T, V) fp32, written by the test from llt's forward of the model that was exported, not of the
folder) compared with llt's; then the folder's tokenizer (AutoTokenizer: tokenizer.model +
tokenizer_config.json) must give llt's ids of TEXT ("text_ids", BOS first). Each --pth FILE (a
Meta consolidated.00.pth) must load with this torch's torch.load (weights_only by default).
One process for all, as importing transformers takes most of the time.

Run: build/client-venv/bin/python data_prep/check_export_transformers.py --text TEXT \\
         [--atol A] [--pth FILE]... DIR LLT_LOGITS [DIR LLT_LOGITS]...
Prints one line per check; exits 1 naming the first problem found.
"""

import argparse
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM


def fail(message):
    print(f"check_export_transformers: {message}", file=sys.stderr)
    sys.exit(1)


def check_folder(folder, llt_logits, text, atol):
    llt = load_file(llt_logits)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        logits = model(llt["tokens"]).logits.float()
    if logits.shape != llt["logits"].shape:
        fail(f"{folder}: logits of shape {tuple(logits.shape)}, llt's are "
             f"{tuple(llt['logits'].shape)}")
    diff = (logits - llt["logits"]).abs().max().item()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(text)["input_ids"]
    llt_ids = llt["text_ids"].tolist()
    print(f"check_export_transformers: {folder}: transformers {transformers.__version__}, torch "
          f"{torch.__version__}: logits {tuple(logits.shape)}, max |transformers - llt| = "
          f"{diff:.3g} (atol {atol:g}); {type(tokenizer).__name__} ids of the text equal llt's: "
          f"{ids == llt_ids}")
    if not diff <= atol:
        fail(f"{folder}: logits differ from llt's by {diff:.3g} > {atol:g}")
    if ids != llt_ids:
        fail(f"{folder}: {type(tokenizer).__name__} gives {ids} for {text!r}, llt's tokenizer "
             f"{llt_ids}")


def check_pth(path):
    state = torch.load(path, map_location="cpu")
    dtypes = sorted({str(t.dtype) for t in state.values()})
    print(f"check_export_transformers: {path}: torch.load gives {len(state)} tensors, {dtypes}")
    if not all(isinstance(t, torch.Tensor) for t in state.values()):
        fail(f"{path}: not a flat dict of tensors")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pairs", nargs="+", help="DIR LLT_LOGITS, repeated")
    parser.add_argument("--text", required=True)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--pth", action="append", default=[])
    a = parser.parse_args()
    if len(a.pairs) % 2:
        fail("positional arguments come in pairs DIR LLT_LOGITS")
    for folder, llt_logits in zip(a.pairs[::2], a.pairs[1::2]):
        check_folder(folder, llt_logits, a.text, a.atol)
    for path in a.pth:
        check_pth(path)


if __name__ == "__main__":
    main()
