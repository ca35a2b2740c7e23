"""An llt-export folder as transformers loads it (run by tests/test_export.cpp in the client venv,
scripts/client-venv.sh, never with Debian's torch 1.13).

LlamaForCausalLM.from_pretrained(DIR) in fp32 on the CPU, its logits on the ids of LLT_LOGITS
(a safetensors file holding "tokens" (B, T) int64 and "logits" (B, T, V) fp32, written by the test
from llt's forward of the model that was exported, not of the folder) compared with llt's; then the folder's tokenizer
(AutoTokenizer: tokenizer.model + tokenizer_config.json) must give llt's ids of TEXT ("text_ids",
BOS first).

Run: build/client-venv/bin/python data_prep/check_export_transformers.py DIR LLT_LOGITS \
         --text TEXT [--atol A]
Prints the largest difference; exits 1 naming the first problem found.
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("llt_logits")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--text", required=True)
    a = parser.parse_args()
    llt = load_file(a.llt_logits)
    model = LlamaForCausalLM.from_pretrained(a.folder, dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        logits = model(llt["tokens"]).logits.float()
    if logits.shape != llt["logits"].shape:
        fail(f"logits of shape {tuple(logits.shape)}, llt's are {tuple(llt['logits'].shape)}")
    diff = (logits - llt["logits"]).abs().max().item()
    tokenizer = AutoTokenizer.from_pretrained(a.folder)
    ids = tokenizer(a.text)["input_ids"]
    llt_ids = llt["text_ids"].tolist()
    print(f"check_export_transformers: transformers {transformers.__version__}, torch "
          f"{torch.__version__}: logits {tuple(logits.shape)}, max |transformers - llt| = "
          f"{diff:.3g} (atol {a.atol:g}); {type(tokenizer).__name__} ids of the text equal llt's: "
          f"{ids == llt_ids}")
    if not diff <= a.atol:
        fail(f"logits differ from llt's by {diff:.3g} > {a.atol:g}")
    if ids != llt_ids:
        fail(f"{type(tokenizer).__name__} gives {ids} for {a.text!r}, llt's tokenizer {llt_ids}")


if __name__ == "__main__":
    main()
