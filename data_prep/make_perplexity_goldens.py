#!/usr/bin/python3
"""Goldens for tests/test_perplexity.cpp: next-token NLL of the shipped stories260K model over a
few Alpaca samples and over a small text file with sliding windows, computed by the independent
PyTorch reference (data_prep/llama_reference.py). Shares no code with llt.

Writes tests/assets/perplexity/goldens.json. Reads tests/assets/perplexity/story.txt.

Alpaca samples: records [SKIP, SKIP + FIRST) of the shipped first 5,000, tokenized here with
sentencepiece as stanford_alpaca's train.py does (BOS + tokens(prompt + output) + EOS; the first
1 + len(tokens(prompt)) tokens are the source, -100 in labels). None of them is longer than 512,
so no cut applies. The ids are stored, so the test can check that llt-tokenize made the same.
  labels: the tokens whose labels are not -100 (the response and EOS), each predicted from all
          tokens before it;
  all:    every token but the first.

Text: the file's bytes decoded as UTF-8, tokenized once with BOS at the start, scored with
Hugging Face's sliding-window recipe ("Perplexity of fixed-length models", transformers docs),
written out literally below: windows [begin, min(begin + window, n)) for begin = 0, stride,
2 stride ...; target ids -100 on all but the last (end - previous end) tokens; stop after the
window that reaches the end. Unlike the docs, per-token NLLs are summed (the docs multiply each
window's mean by its target length, which counts one token too many per window).

Every sequence runs alone (batch 1); log_softmax in fp32 as llt does, sums in fp64. The same is
run in fp64 (RMSNorm and RoPE too) to record the reference's own fp32 error.

Run: /usr/bin/python3 data_prep/make_perplexity_goldens.py [OUTPUT_DIR]
"""

import json
import math
import os
import re
import sys

import sentencepiece as spm
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402
from make_finetune_goldens import (PROMPT_INPUT, PROMPT_NO_INPUT, forward,  # noqa: E402
                                   wide_precision)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "assets/models/stories260K/stories260K.bin")
TOKENIZER = os.path.join(ROOT, "assets/models/stories260K/tok512.model")
ALPACA = os.path.join(ROOT, "assets/data/alpaca/alpaca_data_first_5000.json")
SKIP, FIRST = 8, 5  # records 8..12: lengths 161, 220, 234, 136, 264; record 9 has an input
TEXT = "story.txt"
TEXT_CASES = [(512, 512), (128, 128), (128, 32), (100, 37), (512, 200)]  # (window, stride)
IGNORE = -100


def alpaca_samples(sp):
    """[(ids, source_length, record index)] as stanford_alpaca tokenizes them."""
    with open(ALPACA) as f:
        records = json.load(f)
    samples = []
    for i in range(SKIP, SKIP + FIRST):
        r = records[i]
        source = (PROMPT_INPUT if r.get("input", "") != "" else PROMPT_NO_INPUT).format_map(r)
        ids = [sp.bos_id()] + sp.encode(source + r["output"]) + [sp.eos_id()]
        samples.append((ids, 1 + len(sp.encode(source)), i))
    return samples


def nll_sum(model, ids, labels, dtype):
    """(scored tokens, sum of -log p(labels[t + 1] | ids[:t + 1])) over labels != -100."""
    with torch.no_grad():
        logits = forward(model, torch.tensor([ids]))[0]  # (T, V) in the model's dtype
    logp = F.log_softmax(logits.to(dtype), dim=-1)
    labels = torch.tensor(labels)
    targets = labels[1:]
    keep = targets != IGNORE
    picked = logp[:-1][keep].gather(1, targets[keep][:, None]).squeeze(1)
    return int(keep.sum()), float(-picked.double().sum())


def hf_windows(n, window, stride):
    """Hugging Face's loop: [(begin, end, labels mask start)] — positions >= mask start of the
    window are targets."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        trg_len = end - prev_end  # may differ from stride on the last window
        out.append((begin, end, (end - begin) - trg_len))
        prev_end = end
        if end == n:
            break
    return out


def summary(tokens, total):
    mean = total / tokens
    return {"tokens": tokens, "nll_sum": total, "mean_nll": mean, "perplexity": math.exp(mean)}


def evaluate(model, samples, text_ids, dtype):
    data = {"labels": [], "all": []}
    for ids, source_length, _ in samples:
        labels = [IGNORE] * source_length + ids[source_length:]
        data["labels"].append(nll_sum(model, ids, labels, dtype))
        data["all"].append(nll_sum(model, ids, ids, dtype))
    text = []
    for window, stride in TEXT_CASES:
        scores = []
        for begin, end, first in hf_windows(len(text_ids), window, stride):
            ids = text_ids[begin:end]
            labels = [IGNORE] * first + ids[first:]
            scores.append(nll_sum(model, ids, labels, dtype))
        text.append(scores)
    return data, text


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/assets/perplexity")
    torch.set_num_threads(1)  # reproducible reduction order
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    args, state_dict = ref.read_llama2c_bin(MODEL)
    model = ref.build_model(args, state_dict)
    samples = alpaca_samples(sp)
    with open(os.path.join(ROOT, "tests/assets/perplexity", TEXT), "rb") as f:
        text_ids = [sp.bos_id()] + sp.encode(f.read().decode("utf-8"))

    data, text = evaluate(model, samples, text_ids, torch.float32)
    with wide_precision():
        data64, text64 = evaluate(model.double(), samples, text_ids, torch.float64)

    def rel(a, b):
        return abs(a - b) / abs(b)

    golden = {"format": "llt-perplexity-golden-v1",
              "model": "assets/models/stories260K/stories260K.bin",
              "tokenizer": "assets/models/stories260K/tok512.model",
              "alpaca": {"skip": SKIP, "first": FIRST, "max_len": 512}, "samples": [],
              "text": {"file": TEXT, "ids": len(text_ids), "cases": []},
              "measured": {}, "torch_version": torch.__version__}
    for over in ("labels", "all"):
        golden[over] = summary(sum(t for t, _ in data[over]), sum(s for _, s in data[over]))
        total64 = sum(s for _, s in data64[over])
        golden["measured"][over + "_fp32_vs_fp64_rel"] = rel(golden[over]["nll_sum"], total64)
    for k, (ids, source_length, index) in enumerate(samples):
        golden["samples"].append({
            "index": index, "ids": ids, "source_length": source_length,
            "labels": {"tokens": data["labels"][k][0], "nll_sum": data["labels"][k][1]},
            "all": {"tokens": data["all"][k][0], "nll_sum": data["all"][k][1]}})
    for (window, stride), scores, scores64 in zip(TEXT_CASES, text, text64):
        case = {"window": window, "stride": stride, "windows": len(scores),
                **summary(sum(t for t, _ in scores), sum(s for _, s in scores))}
        case["fp32_vs_fp64_rel"] = rel(case["nll_sum"], sum(s for _, s in scores64))
        golden["text"]["cases"].append(case)
    for over in ("labels", "all"):
        print(over, json.dumps(golden[over]), file=sys.stderr)
    for case in golden["text"]["cases"]:
        print("text", json.dumps(case), file=sys.stderr)
    print("measured", json.dumps(golden["measured"]), file=sys.stderr)
    os.makedirs(out_dir, exist_ok=True)
    text = json.dumps(golden, indent=1)
    # One line per id list, not one line per id.
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ",".join(m.group(1).replace(",", " ").split()) + "]", text)
    with open(os.path.join(out_dir, "goldens.json"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
