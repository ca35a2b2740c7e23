#!/usr/bin/python3
"""The llt-tokenize job in plain Python: the speed reference for bench/run_tokenize_bench.sh.

Same input, same output layout as llt-tokenize (DESIGN.md "Shards"): stanford_alpaca's recipe
(train.py preprocess(): source = the prompt, tokenized alone to count its tokens; example =
prompt + output + EOS, tokenized once; both with BOS and cut to max_len; labels -100 on the first
len(source) tokens), samples with no label token dropped, records with a missing/non-string field
or an empty output skipped, HDF5 shards written with h5py (gzip 4 + shuffle + fletcher32, 64 Ki
chunks) as *.tmp and renamed, then manifest.json. Tokenization uses SentencePiece's own batch
encoder on --threads threads (python3-sentencepiece's `num_threads`), which is how a Python user
would parallelise it.

Prints one JSON line: {"impl": "python", "samples", "records", "seconds", "samples_per_s", ...}.
"seconds" runs from the start of main() (imports excluded) to the manifest written, like
llt-tokenize's own figure. Run with Debian's Python:
    /usr/bin/python3 bench/tokenize_reference.py --input FILE --tokenizer MODEL --output DIR
"""
import argparse
import hashlib
import json
import os
import shutil
import time

import h5py
import numpy as np
import sentencepiece as spm

# stanford_alpaca train.py PROMPT_DICT, verbatim.
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
FIELDS = ("instruction", "input", "output")
CHUNK = 1 << 16


def bad_reason(record):
    if not isinstance(record, dict):
        return "not a JSON object"
    for field in FIELDS:
        if field not in record:
            return f"{field} missing"
        if not isinstance(record[field], str):
            return f"{field} not a string"
    return "output empty" if record["output"] == "" else None


def write_shard(path, ids, offsets, source_lengths, source_indices, attrs):
    tmp = path + ".tmp"
    with h5py.File(tmp, "w", track_order=False) as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, data, dtype in (("input_ids", ids, np.int32), ("offsets", offsets, np.int64),
                                  ("source_lengths", source_lengths, np.int32),
                                  ("source_indices", source_indices, np.int64)):
            array = np.asarray(data, dtype=dtype)
            f.create_dataset(name, data=array, chunks=(min(len(array), CHUNK),),
                             compression="gzip", compression_opts=4, shuffle=True,
                             fletcher32=True)
    os.replace(tmp, path)


def main():
    start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--samples-per-shard", type=int, default=10000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()

    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    bos, eos = sp.bos_id(), sp.eos_id()
    with open(args.input, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    if text.lstrip()[:1] == "[":
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    keep = [i for i, r in enumerate(records) if bad_reason(r) is None]
    prompts = [(PROMPT_INPUT if records[i]["input"] else PROMPT_NO_INPUT).format_map(records[i])
               for i in keep]
    examples = [prompt + records[i]["output"] for prompt, i in zip(prompts, keep)]
    source_ids = sp.encode(prompts, num_threads=args.threads)
    example_ids = sp.encode(examples, num_threads=args.threads)

    samples = []  # (record index, ids, source length)
    for i, src, ex in zip(keep, source_ids, example_ids):
        ids = ([bos] + ex + [eos])[: args.max_len]
        source_length = min(1 + len(src), args.max_len)
        if source_length < len(ids):
            samples.append((i, ids, source_length))

    if os.path.exists(args.output):
        shutil.rmtree(args.output)
    os.makedirs(args.output)
    tokenizer_sha = hashlib.sha256(open(args.tokenizer, "rb").read()).hexdigest()
    attrs = {"format_version": 1, "tokenizer_sha256": tokenizer_sha,
             "vocab_size": sp.get_piece_size(), "bos_id": bos, "eos_id": eos,
             "template": "alpaca", "max_len": args.max_len,
             "source_sha256": hashlib.sha256(raw).hexdigest()}
    shards = []
    for s in range(0, len(samples), args.samples_per_shard):
        part = samples[s:s + args.samples_per_shard]
        ids, offsets = [], [0]
        for _, sample_ids, _ in part:
            ids.extend(sample_ids)
            offsets.append(len(ids))
        name = f"shard-{len(shards):05d}.h5"
        path = os.path.join(args.output, name)
        write_shard(path, ids, offsets, [x[2] for x in part], [x[0] for x in part],
                    dict(attrs, first_index=part[0][0]))
        shards.append({"file": name, "samples": len(part), "tokens": len(ids),
                       "first_index": part[0][0],
                       "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()})
    manifest = dict(attrs, input=args.input, samples=len(samples),
                    tokens=sum(len(x[1]) for x in samples), shards=shards)
    with open(os.path.join(args.output, "manifest.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(os.path.join(args.output, "manifest.json.tmp"),
               os.path.join(args.output, "manifest.json"))
    seconds = time.perf_counter() - start
    print(json.dumps({"impl": "python", "records": len(keep), "samples": len(samples),
                      "seconds": round(seconds, 4), "samples_per_s": round(len(keep) / seconds),
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
