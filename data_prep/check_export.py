#!/usr/bin/python3
"""An independent check of an llt-export Hugging Face folder (run by tests/test_export.cpp).

Reads DIR the way transformers would, but with none of llt's code and no safetensors package:
config.json; model.safetensors, or model.safetensors.index.json and its shards, each parsed by hand
from its header (u64 little-endian length, JSON, then the bytes); HF names mapped back to Meta's
with the table of make_checkpoint_fixtures.py; q/k rows taken back from transformers'
rotate-half order to Meta's interleaved pairs. The forward is data_prep/llama_reference.py's
(complex-number RoPE, its own attention), and its logits are compared with llt's logits of the
model that was exported (the base, with the adapter merged in memory), which the test wrote to
LLT_LOGITS (a safetensors file holding "tokens" (B, T) int64 and "logits" (B, T, V) fp32). So a
wrong q/k row order, name or merge in the export fails here, though every reader of the folder
would agree with every other.

A Meta folder (--format meta: params.json + consolidated.00.pth) is read with torch.load
(weights_only=True) instead, its params.json checked to hold only fields of Meta's ModelArgs.

Run: /usr/bin/python3 data_prep/check_export.py DIR LLT_LOGITS [--atol A]
Prints the largest difference; exits 1 naming the first problem found.
"""

import argparse
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import ModelArgs, build_model  # noqa: E402
from make_checkpoint_fixtures import HF_LAYER, HF_TOP  # noqa: E402

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}
CONFIG_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fail(message):
    print(f"check_export: {message}", file=sys.stderr)
    sys.exit(1)


def read_safetensors(path):
    """{name: tensor} and the header's __metadata__, checking that the byte ranges tile the data."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + length])
    metadata = header.pop("__metadata__", None)
    data = blob[8 + length:]
    tensors, end = {}, 0
    for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, stop = entry["data_offsets"]
        if begin != end:
            fail(f"{path}: tensor {name} starts at {begin}, the previous one ends at {end}")
        dtype = DTYPES[entry["dtype"]]
        t = torch.frombuffer(bytearray(data[begin:stop]), dtype=dtype) if stop > begin else \
            torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(entry["shape"])
        end = stop
    if end != len(data):
        fail(f"{path}: {len(data) - end} bytes after the last tensor")
    return tensors, metadata


def read_weights(folder):
    """Every tensor of the folder by HF name, each listed once (by the index, if sharded)."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index_path):
        if os.path.exists(single):
            fail(f"{folder}: both model.safetensors and an index")
        with open(index_path) as f:
            index = json.load(f)
        files = sorted(set(index["weight_map"].values()))
    else:
        index, files = None, ["model.safetensors"]
    weights, total = {}, 0
    for name in files:
        tensors, metadata = read_safetensors(os.path.join(folder, name))
        if metadata != {"format": "pt"}:
            fail(f"{name}: __metadata__ is {metadata}, transformers wants {{'format': 'pt'}}")
        for key, t in tensors.items():
            if key in weights:
                fail(f"{name}: tensor {key} is in two files")
            if index is not None and index["weight_map"].get(key) != name:
                fail(f"{name}: tensor {key} is not listed for this file in the index")
            weights[key] = t
            total += t.numel() * t.element_size()
    if index is not None:
        if set(index["weight_map"]) != set(weights):
            fail("the index lists other tensors than the shards hold")
        if index["metadata"]["total_size"] != total:
            fail(f"index total_size {index['metadata']['total_size']}, the tensors hold {total}")
    return weights, len(files)


def unpermute(w, n_heads):
    """transformers' rotate-half rows of wq/wk back to Meta's interleaved pairs (the inverse of
    make_checkpoint_fixtures.permute)."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_state_dict(config, weights):
    to_meta = {hf: meta for meta, hf in HF_TOP.items()}
    for i in range(config["num_hidden_layers"]):
        for meta, hf in HF_LAYER.items():
            to_meta[f"model.layers.{i}.{hf}"] = f"layers.{i}.{meta}"
    state = {}
    for hf, t in weights.items():
        if hf not in to_meta:
            fail(f"tensor {hf} is not a LlamaForCausalLM weight")
        name = to_meta[hf]
        t = t.float()
        if name.endswith("attention.wq.weight"):
            t = unpermute(t, config["num_attention_heads"])
        elif name.endswith("attention.wk.weight"):
            t = unpermute(t, config["num_key_value_heads"])
        state[name] = t
    return state


def check_meta(a):
    """params.json + consolidated.00.pth, read by torch.load (weights_only: plain tensors only)."""
    with open(os.path.join(a.folder, "params.json")) as f:
        params = json.load(f)
    if not os.path.exists(os.path.join(a.folder, "tokenizer.model")):
        fail(f"{a.folder}: no tokenizer.model")
    state = torch.load(os.path.join(a.folder, "consolidated.00.pth"), map_location="cpu",
                       weights_only=True)
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1:
        fail(f"consolidated.00.pth holds tensors of several dtypes: {dtypes}")
    known = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
             "ffn_dim_multiplier", "norm_eps", "rope_theta"}
    if not set(params) <= known:
        fail(f"params.json has keys Meta's ModelArgs lacks: {set(params) - known}")
    args = ModelArgs(**params, max_seq_len=64)
    model = build_model(args, {k: v.float() for k, v in state.items()})
    return model, f"{len(state)} tensors in consolidated.00.pth, {dtypes.pop()}"


def check_hf(a):
    with open(os.path.join(a.folder, "config.json")) as f:
        config = json.load(f)
    for key, value in {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                       "hidden_act": "silu"}.items():
        if config.get(key) != value:
            fail(f"config.json: {key} is {config.get(key)!r}, expected {value!r}")
    for name in ("generation_config.json", "tokenizer.model", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if not os.path.exists(os.path.join(a.folder, name)):
            fail(f"{a.folder}: no {name}")
    weights, n_files = read_weights(a.folder)
    dtype = CONFIG_DTYPES[config["torch_dtype"]]
    for name, t in weights.items():
        if t.dtype != dtype:
            fail(f"tensor {name} is {t.dtype}, config.json says torch_dtype {config['torch_dtype']}")
    tied = config["tie_word_embeddings"]
    if ("lm_head.weight" in weights) == tied:
        fail(f"tie_word_embeddings is {tied} but lm_head.weight is {'' if tied else 'not '}stored")
    args = ModelArgs(dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
                     n_heads=config["num_attention_heads"],
                     n_kv_heads=config["num_key_value_heads"], vocab_size=config["vocab_size"],
                     hidden_dim=config["intermediate_size"], norm_eps=config["rms_norm_eps"],
                     rope_theta=config["rope_theta"],
                     max_seq_len=config["max_position_embeddings"], tie_embeddings=tied)
    model = build_model(args, meta_state_dict(config, weights))
    return model, f"{len(weights)} tensors in {n_files} file(s), {config['torch_dtype']}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("llt_logits")
    parser.add_argument("--atol", type=float, default=1e-4)
    a = parser.parse_args()
    meta = os.path.exists(os.path.join(a.folder, "params.json"))
    model, what = check_meta(a) if meta else check_hf(a)
    llt, _ = read_safetensors(a.llt_logits)
    ours = model(llt["tokens"])
    diff = (ours - llt["logits"].float()).abs().max().item()
    print(f"check_export: {'meta' if meta else 'hf'}: {what}; logits {tuple(ours.shape)}, "
          f"max |reference - llt| = {diff:.3g} (atol {a.atol:g})")
    if not diff <= a.atol:
        fail(f"logits differ from llt's by {diff:.3g} > {a.atol:g}")


if __name__ == "__main__":
    main()
