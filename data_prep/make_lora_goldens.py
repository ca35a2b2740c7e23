#!/usr/bin/python3
"""Writes tests/assets/lora/peft_export.json: what a Hugging Face PEFT adapter of llt's "tiny"
model preset must contain (described in tests/assets/lora/README.md).

Independent of llt's C++: the key names follow PEFT's convention for LlamaForCausalLM
("base_model.model." + the HF module path + ".lora_A.weight"), and lora_B rows of q_proj/k_proj
are permuted with permute() of transformers' convert_llama_weights_to_hf.py, the function that
turns Meta's q/k weights into HF's. The script checks the identity that makes this right:
permute(W + s B A) == permute(W) + s permute(B) A, i.e. the PEFT adapter on the HF model adds the
same update as llt's adapter on the Meta model.

Run: /usr/bin/python3 data_prep/make_lora_goldens.py [OUTPUT_DIR]
"""

import json
import os
import sys

import torch

# llt's "tiny" preset (lib/llt/model.cpp preset_args): dim 64, 2 layers, 8 heads, 4 kv heads.
DIM, N_LAYERS, N_HEADS, N_KV_HEADS = 64, 2, 8, 4
HEAD_DIM = DIM // N_HEADS
RANK, ALPHA = 2, 4.0
TARGETS = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj"}  # Meta -> HF module names
BASE_MODEL = "meta-llama/Llama-2-7b-hf"


def permute(w, n_heads, dim1, dim2):
    """transformers convert_llama_weights_to_hf.py: Meta interleaved pairs -> rotate-half rows."""
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def lora_b_meta(name):
    """The B matrix the C++ test puts into layer 0's `name`: arange(out * r) reshaped (out, r)."""
    out = DIM if name == "wq" else N_KV_HEADS * HEAD_DIM
    return torch.arange(out * RANK, dtype=torch.float32).reshape(out, RANK)


def hf_b(name, b):
    if name == "wq":
        return permute(b, N_HEADS, b.shape[0], RANK)
    if name == "wk":
        return permute(b, N_KV_HEADS, b.shape[0], RANK)
    return b


def check_identity():
    g = torch.Generator().manual_seed(0)
    for name, heads in (("wq", N_HEADS), ("wk", N_KV_HEADS)):
        out = heads * HEAD_DIM
        w = torch.randn(out, DIM, generator=g, dtype=torch.float64)
        a = torch.randn(RANK, DIM, generator=g, dtype=torch.float64)
        b = torch.randn(out, RANK, generator=g, dtype=torch.float64)
        s = ALPHA / RANK
        lhs = permute(w + s * b @ a, heads, out, DIM)
        rhs = permute(w, heads, out, DIM) + s * hf_b(name, b) @ a
        assert torch.allclose(lhs, rhs, rtol=0, atol=1e-12), name


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "assets", "lora")
    check_identity()
    keys = {}
    for layer in range(N_LAYERS):
        for meta, hf in TARGETS.items():
            out = DIM if meta == "wq" else N_KV_HEADS * HEAD_DIM
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{hf}"
            keys[prefix + ".lora_A.weight"] = [RANK, DIM]
            keys[prefix + ".lora_B.weight"] = [out, RANK]
    golden = {
        "model": {"preset": "tiny", "dim": DIM, "n_layers": N_LAYERS, "n_heads": N_HEADS,
                  "n_kv_heads": N_KV_HEADS},
        "lora": {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": list(TARGETS)},
        "keys": keys,
        "layer0_lora_B_hf": {TARGETS[m]: hf_b(m, lora_b_meta(m)).tolist() for m in TARGETS},
        "adapter_config": {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
            "lora_dropout": 0.0, "target_modules": list(TARGETS.values()),
            "base_model_name_or_path": BASE_MODEL,
        },
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "peft_export.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
