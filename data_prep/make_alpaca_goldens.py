#!/usr/bin/python3
"""Writes tests/assets/alpaca/goldens.json: Alpaca training samples as stanford_alpaca builds them.

The reference is stanford_alpaca's train.py `preprocess()`, re-stated with Google's SentencePiece
Python binding (Debian's python3-sentencepiece) instead of the Hugging Face LLaMA tokenizer, which
wraps the same model:
  - prompt = PROMPT_DICT["prompt_input" if input else "prompt_no_input"].format_map(record)
  - source ids = [BOS] + sp.encode(prompt)                   (tokenized alone, to count them)
  - example ids = [BOS] + sp.encode(prompt + output) + [EOS] (the concatenated text, once; HF
    turns the trailing "</s>" text into the EOS id)
  - both cut to max_len (model_max_length, 512); labels = ids with the first len(source ids)
    set to -100. A sample whose labels are all -100 is dropped (llt's rule; the reference would
    train on it with no loss), and a record with a missing/non-string field or an empty output
    is skipped (llt's --on-bad-record skip).
None of this uses llt's C++ code.

It records, for the shipped tokenizer and data (assets/):
  - `samples`: full ids and source length of chosen records (no input, with input, non-ASCII,
    CJK, a prompt/output boundary merge, truncated at 512);
  - `synthetic`: handmade records with unicode edge cases (emoji, CJK, combining marks, U+2581,
    repeated/leading/trailing spaces, tabs, newlines) and their ids;
  - `whole_file`: for max_len 512 and 64, counts and sha256 digests of the concatenated arrays
    (input_ids int32 LE, offsets int64 LE from 0, source_lengths int32 LE, source_indices int64 LE)
    over all 5,000 records, so a test can compare every token without storing them.
  - `prompt_not_prefix`: the records whose sp.encode(prompt + output) does not start with
    sp.encode(prompt) (SentencePiece merges across the prompt/output boundary).
It also writes tests/assets/alpaca/h5py_shard.h5: the `samples` above as one shard in the
DESIGN.md layout, written by h5py (Python str attributes are variable-length strings there), so
llt's reader is checked against a file it did not write.

Run from the repository root: /usr/bin/python3 data_prep/make_alpaca_goldens.py
"""
import hashlib
import json
import pathlib
import struct

import h5py
import numpy as np
import sentencepiece as spm

TOKENIZER = "assets/tokenizers/llama2/tokenizer.model"
DATA = "assets/data/alpaca/alpaca_data_first_5000.json"
OUT = pathlib.Path("tests/assets/alpaca/goldens.json")
H5PY_SHARD = pathlib.Path("tests/assets/alpaca/h5py_shard.h5")

# stanford_alpaca train.py PROMPT_DICT, verbatim.
PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}

# 0-2: no input; 5: input; 4, 44, 116, 153: non-ASCII; 1314, 3164: CJK; 42: ":" + "-" merge;
# 264: longer than 512 tokens; 712: the known wrong answer (original, not cleaned data).
CHOSEN = [0, 1, 2, 4, 5, 42, 44, 116, 153, 264, 712, 1314, 3164]

SYNTHETIC = [
    {"instruction": "Translate to French.", "input": "Hello, world! 😀 🚀", "output": "Bonjour, le monde ! 😀 🚀"},
    {"instruction": "中文分词测试", "input": "", "output": "日本語のテキスト and 한국어 텍스트"},
    {"instruction": "Spell it", "input": "naïve cafe\u0301 résumé", "output": "n-a-ï-v-e"},
    {"instruction": "Spaces  inside   and\ttabs", "input": "  leading", "output": "trailing  "},
    {"instruction": "Meta space\u2581symbol", "input": "\u2581start", "output": "end\u2581"},
    {"instruction": "Newlines", "input": "", "output": "\nfirst line\n\n  second line \n"},
    {"instruction": "One trailing space", "input": "x ", "output": " y "},
    {"instruction": "Math", "input": "", "output": "∑ x² ≤ ∞, √2 ≈ 1.414 — “quoted”"},
    {"instruction": "<s> and </s> are plain text here", "input": "", "output": "<unk> too"},
    {"instruction": "Zero\u200bwidth and\u00a0nbsp", "input": "", "output": "🦙🦙🦙"},
]


def prompt_of(record):
    key = "prompt_input" if record["input"] != "" else "prompt_no_input"
    return PROMPT_DICT[key].format_map(record)


def is_bad(record):
    if not isinstance(record, dict):
        return True
    if any(not isinstance(record.get(f), str) for f in ("instruction", "input", "output")):
        return True
    return record["output"] == ""


def build(sp, record, max_len):
    prompt = prompt_of(record)
    source = [sp.bos_id()] + sp.encode(prompt)
    body = sp.encode(prompt + record["output"])
    example = [sp.bos_id()] + body + [sp.eos_id()]
    ids = example[:max_len]
    return {
        "ids": ids,
        "source_length": min(len(source), max_len),
        "truncated": len(example) > max_len,
        "prompt_is_prefix": body[: len(source) - 1] == source[1:],
    }


def digest(values, fmt):
    return hashlib.sha256(b"".join(struct.pack(fmt, v) for v in values)).hexdigest()


def whole_file(sp, records, max_len):
    ids, offsets, source_lengths, source_indices = [], [0], [], []
    bad, truncated, dropped, not_prefix, histogram = [], 0, 0, 0, {}
    for index, record in enumerate(records):
        if is_bad(record):
            bad.append(index)
            continue
        s = build(sp, record, max_len)
        not_prefix += not s["prompt_is_prefix"]
        if s["source_length"] >= len(s["ids"]):
            dropped += 1
            continue
        truncated += s["truncated"]
        ids.extend(s["ids"])
        offsets.append(len(ids))
        source_lengths.append(s["source_length"])
        source_indices.append(index)
        histogram[len(s["ids"]) // 32] = histogram.get(len(s["ids"]) // 32, 0) + 1
    counts = [histogram.get(b, 0) for b in range(max(histogram) + 1)]
    return {
        "max_len": max_len,
        "records": len(records),
        "bad_records": bad,
        "samples": len(source_lengths),
        "tokens": len(ids),
        "source_tokens": sum(source_lengths),
        "truncated": truncated,
        "dropped_no_label": dropped,
        "prompt_not_prefix": not_prefix,
        "length_histogram_counts": counts,
        "input_ids_sha256": digest(ids, "<i"),
        "offsets_sha256": digest(offsets, "<q"),
        "source_lengths_sha256": digest(source_lengths, "<i"),
        "source_indices_sha256": digest(source_indices, "<q"),
    }


def write_h5py_shard(samples, tokenizer_sha256, source_sha256, sp):
    ids, offsets = [], [0]
    for s in samples:
        ids.extend(s["ids"])
        offsets.append(len(ids))
    with h5py.File(H5PY_SHARD, "w") as f:
        f.attrs["format_version"] = 1
        f.attrs["tokenizer_sha256"] = tokenizer_sha256
        f.attrs["vocab_size"] = sp.get_piece_size()
        f.attrs["bos_id"] = sp.bos_id()
        f.attrs["eos_id"] = sp.eos_id()
        f.attrs["template"] = "alpaca"
        f.attrs["max_len"] = 512
        f.attrs["source_sha256"] = source_sha256
        f.attrs["first_index"] = samples[0]["index"]
        f.create_dataset("input_ids", data=np.asarray(ids, np.int32), compression="gzip",
                         track_times=False)
        f.create_dataset("offsets", data=np.asarray(offsets, np.int64), track_times=False)
        lengths = [s["source_length"] for s in samples]
        f.create_dataset("source_lengths", data=np.asarray(lengths, np.int32), track_times=False)
        indices = [s["index"] for s in samples]
        f.create_dataset("source_indices", data=np.asarray(indices, np.int64), track_times=False)


def main():
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    raw = pathlib.Path(DATA).read_bytes()
    records = json.loads(raw)
    samples = []
    for index in CHOSEN:
        s = build(sp, records[index], 512)
        samples.append({"index": index, "has_input": records[index]["input"] != "", **s})
    synthetic = [dict(record=r, **build(sp, r, 512)) for r in SYNTHETIC]
    not_prefix = [i for i, r in enumerate(records)
                  if not is_bad(r) and not build(sp, r, 1 << 20)["prompt_is_prefix"]]
    goldens = {
        "generator": "data_prep/make_alpaca_goldens.py",
        "reference": "stanford_alpaca train.py preprocess() with python3-sentencepiece "
                     + spm.__version__,
        "tokenizer": TOKENIZER,
        "tokenizer_sha256": hashlib.sha256(pathlib.Path(TOKENIZER).read_bytes()).hexdigest(),
        "input": DATA,
        "input_sha256": hashlib.sha256(raw).hexdigest(),
        "prompt_dict": PROMPT_DICT,
        "samples": samples,
        "synthetic": synthetic,
        "prompt_not_prefix": not_prefix,
        "whole_file": [whole_file(sp, records, 512), whole_file(sp, records, 64)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_h5py_shard(samples, goldens["tokenizer_sha256"], goldens["input_sha256"], sp)
    OUT.write_text(json.dumps(goldens, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(samples)} samples, {len(synthetic)} synthetic, "
          f"{len(not_prefix)} prompt/output boundary merges")


if __name__ == "__main__":
    main()
