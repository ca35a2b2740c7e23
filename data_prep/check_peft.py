"""PEFT and llt's LoRA adapters, both ways (run by tests/test_export.cpp in the client venv,
scripts/client-venv.sh, never with Debian's torch 1.13).

--on BASE ADAPTER LLT_LOGITS: PeftModel.from_pretrained puts ADAPTER (an llt run's adapter-peft/)
    on LlamaForCausalLM.from_pretrained(BASE) (an llt-export folder) in fp32 on the CPU; its
    logits on the ids of LLT_LOGITS (a safetensors file holding "tokens" (B, T) int64 and
    "logits" (B, T, V) fp32: llt's forward of the base with that adapter) must be llt's.
--make BASE OUT TOKENS LAYERS TARGETS: PEFT makes an adapter itself: get_peft_model on BASE with
    LoraConfig(r=4, lora_alpha=12, target_modules=TARGETS (comma-separated HF names),
    layers_to_transform=LAYERS (comma-separated, or "all")), every lora_B drawn from N(0, 0.05²)
    (PEFT starts B at zero, which would make any reader look right), then save_pretrained(OUT),
    and PEFT's logits on the "tokens" of TOKENS written to OUT.logits for llt to match.

One process for all, as importing transformers and peft takes most of the time.
Run: build/client-venv/bin/python data_prep/check_peft.py [--atol A] \\
         [--on BASE ADAPTER LLT_LOGITS]... [--make BASE OUT TOKENS LAYERS TARGETS]...
Prints one line per check; exits 1 naming the first problem found.
"""

import argparse
import json
import sys

import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM


def fail(message):
    print(f"check_peft: {message}", file=sys.stderr)
    sys.exit(1)


def base_model(folder):
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model


def check_on(base, adapter, llt_logits, atol):
    llt = load_file(llt_logits)
    model = PeftModel.from_pretrained(base_model(base), adapter)
    model.eval()
    with torch.inference_mode():
        logits = model(llt["tokens"]).logits.float()
    if logits.shape != llt["logits"].shape:
        fail(f"{adapter}: logits of shape {tuple(logits.shape)}, llt's are "
             f"{tuple(llt['logits'].shape)}")
    diff = (logits - llt["logits"]).abs().max().item()
    changed = (logits - base_model(base)(llt["tokens"]).logits).abs().max().item()
    print(f"check_peft: peft {peft.__version__}: PeftModel.from_pretrained({adapter}) on {base}: "
          f"max |peft - llt| = {diff:.3g} (atol {atol:g}); the adapter moves the logits by "
          f"{changed:.3g}")
    if not diff <= atol:
        fail(f"{adapter}: logits differ from llt's by {diff:.3g} > {atol:g}")
    if not changed > 100 * atol:
        fail(f"{adapter}: the adapter changes the logits by only {changed:.3g}")


def make(base, out, tokens_file, layers, targets, seed):
    config = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=targets.split(","),
                        layers_to_transform=None if layers == "all"
                        else [int(x) for x in layers.split(",")])
    model = get_peft_model(base_model(base), config)
    generator = torch.Generator().manual_seed(seed)
    drawn = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
                drawn += 1
    model.eval()
    tokens = load_file(tokens_file)["tokens"]
    with torch.inference_mode():
        logits = model(tokens).logits.float().contiguous()
    model.save_pretrained(out)
    save_file({"tokens": tokens, "logits": logits}, out + ".logits")
    with open(f"{out}/adapter_config.json") as f:
        saved = json.load(f)
    print(f"check_peft: peft {peft.__version__}: get_peft_model + save_pretrained -> {out} "
          f"({drawn} lora_B drawn; target_modules {sorted(saved['target_modules'])}, "
          f"layers_to_transform {saved.get('layers_to_transform')})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--on", nargs=3, action="append", default=[],
                        metavar=("BASE", "ADAPTER", "LLT_LOGITS"))
    parser.add_argument("--make", nargs=5, action="append", default=[],
                        metavar=("BASE", "OUT", "TOKENS", "LAYERS", "TARGETS"))
    a = parser.parse_args()
    for base, adapter, llt_logits in a.on:
        check_on(base, adapter, llt_logits, a.atol)
    for i, (base, out, tokens, layers, targets) in enumerate(a.make):
        make(base, out, tokens, layers, targets, seed=7 + i)


if __name__ == "__main__":
    main()
