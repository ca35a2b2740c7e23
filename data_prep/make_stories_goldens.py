#!/usr/bin/python3
"""Greedy-generation goldens for stories260K (tests/assets/stories260K/greedy_goldens.json).

The Python side of an independent two-implementation check (see the README beside the JSON):
  1. `--write-ids DIR` tokenizes every prompt with SentencePiece (tok512.model, BOS prepended)
     and writes DIR/<case>.ids (the ids, BOS first) and DIR/<case>.txt (the prompt text), which
     a locally built llama2.c run.c consumes (its output is captured as DIR/<case>.ids.log, and
     for prompts its own tokenizer handles like SentencePiece, DIR/<case>.txt.log).
  2. `--runc-dir DIR --output FILE` runs data_prep/llama_reference.py greedily on the same ids,
     with and without its KV cache, compares with run.c's logs token for token and writes FILE.
Nothing here builds or ships run.c.
"""

import argparse
import hashlib
import json
import os
import re
import sys

import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402

STEPS = 256  # run.c -n 256: positions 0..255 are run through the model
EXTRA_PROMPTS = [  # (case name, prompt); none has leading, trailing or repeated spaces
    ("once_upon_a_time", "Once upon a time"),
    ("lily_and_tom", "Lily and Tom"),
    ("empty", ""),
    ("sun_was_shining", "The sun was shining and the birds were singing."),
    ("tim_had_a_dog", "Tim had a big dog named Max"),
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cases(seed_prompts_path):
    with open(seed_prompts_path) as f:
        seed = json.load(f)["prompts"]
    out = [(f"seed_{i}", p) for i, p in enumerate(seed)]
    return out + EXTRA_PROMPTS


def runc_safe(prompt):
    """Whether run.c's own BPE encoder should give SentencePiece's ids for this prompt: it keeps
    leading/trailing/repeated spaces that SentencePiece removes, and turns "" into [' ']."""
    return prompt != "" and prompt == prompt.strip() and "  " not in prompt and "\n" not in prompt


def parse_runc_log(path):
    """(prompt_ids, generated ids, stop reason) from the stderr lines the local run.c prints."""
    with open(path) as f:
        text = f.read()
    prompt_ids = [int(x) for x in re.search(r"^PROMPT_IDS((?: \d+)*)$", text, re.M)[1].split()]
    ids = [int(x) for x in re.search(r"^IDS((?: \d+)*)$", text, re.M)[1].split()]
    stop = re.search(r"^STOP (\w+)$", text, re.M)[1]
    return prompt_ids, ids, stop


def write_ids(args, tokenizer):
    os.makedirs(args.write_ids, exist_ok=True)
    for name, prompt in cases(args.seed_prompts):
        ids = [ref.BOS_ID] + tokenizer.encode(prompt)
        with open(os.path.join(args.write_ids, name + ".ids"), "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        if runc_safe(prompt):
            with open(os.path.join(args.write_ids, name + ".txt"), "w") as f:
                f.write(prompt)


def make_goldens(args, tokenizer):
    model_args, state_dict = ref.read_llama2c_bin(args.model)
    model = ref.build_model(model_args, state_dict)
    records = []
    for name, prompt in cases(args.seed_prompts):
        prompt_ids = [ref.BOS_ID] + tokenizer.encode(prompt)
        cached = ref.greedy_generate(model, prompt_ids, STEPS, use_cache=True)
        full = ref.greedy_generate(model, prompt_ids, STEPS, use_cache=False)
        runc_ids, runc_given, runc_stop = parse_runc_log(
            os.path.join(args.runc_dir, name + ".ids.log"))
        if runc_ids != prompt_ids:
            raise SystemExit(f"{name}: run.c read prompt ids {runc_ids}, expected {prompt_ids}")
        agreed = ["data_prep/llama_reference.py (KV cache, fp32)"]
        if full.ids == cached.ids:
            agreed.append("data_prep/llama_reference.py (no cache, fp32)")
        if runc_given == cached.ids and runc_stop == cached.stopped_by:
            agreed.append("llama2.c run.c (fp32, prompt ids given)")
        text_log = os.path.join(args.runc_dir, name + ".txt.log")
        own_tokenizer = None
        if os.path.exists(text_log):
            own_ids, own_given, _ = parse_runc_log(text_log)
            own_tokenizer = {"prompt_ids": own_ids, "same_prompt_ids": own_ids == prompt_ids,
                             "same_ids": own_given == cached.ids}
        records.append({
            "name": name,
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "ids": cached.ids,
            "text": tokenizer.decode(cached.ids),
            "full_text": tokenizer.decode(prompt_ids[1:] + cached.ids),
            "stopped_by": cached.stopped_by,
            "min_margin": round(cached.min_margin, 6),
            "agreed_by": agreed,
            "runc_own_tokenizer": own_tokenizer,
        })
        print(f"{name}: {len(prompt_ids)} prompt ids, {len(cached.ids)} generated, "
              f"stop {cached.stopped_by}, min margin {cached.min_margin:.4f}, "
              f"agreed {len(agreed)}/3", file=sys.stderr)
    golden = {
        "format": "llt-greedy-goldens-v1",
        "model": {"file": "stories260K.bin", "sha256": sha256(args.model),
                  "tokenizer": "tok512.model", "tokenizer_sha256": sha256(args.tokenizer),
                  "args": json.loads(model_args.to_json())},
        "bos_id": ref.BOS_ID,
        "eos_id": ref.EOS_ID,
        "steps": STEPS,
        "conventions": {
            "prompt_ids": "[bos_id] + SentencePiece(tok512.model).encode(prompt)",
            "ids": "generated ids only, greedy (argmax, first index on ties), fp32; generation "
                   "stops when the model produces bos_id (not included) or when the model has "
                   "been run at `steps` positions (0..steps-1); eos_id does not stop it (run.c)",
            "length": "len(prompt_ids) + len(ids) == steps + 1 when stopped_by == 'steps', "
                      "else less; the last id is never fed back",
            "text": "SentencePiece decode of ids alone (so a leading space is dropped)",
            "full_text": "SentencePiece decode of prompt_ids[1:] + ids",
            "min_margin": "smallest (top1 - top2) logit gap over the generated steps: how far "
                          "an fp32 implementation may drift before the argmax could flip",
        },
        "cases": records,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    text = json.dumps(golden, indent=1, ensure_ascii=False)
    # One line per id list, so the file stays readable and diffs by case.
    text = re.sub(r"\[\n\s*(\d[\d,\s]*?)\n\s*\]",
                  lambda m: "[" + ", ".join(m[1].replace(",", " ").split()) + "]", text)
    with open(args.output, "w") as f:
        f.write(text + "\n")


def main():
    data = "/work/shared/data"
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=f"{data}/models/stories260K/stories260K.bin")
    p.add_argument("--tokenizer", default=f"{data}/models/stories260K/tok512.model")
    p.add_argument("--seed-prompts", default=f"{data}/seed_prompts.json")
    p.add_argument("--write-ids", help="write <case>.ids / <case>.txt for run.c into this folder")
    p.add_argument("--runc-dir", help="folder with run.c's <case>.ids.log (+ <case>.txt.log)")
    p.add_argument("--output", default="tests/assets/stories260K/greedy_goldens.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    tokenizer = spm.SentencePieceProcessor(model_file=args.tokenizer)
    if args.write_ids:
        write_ids(args, tokenizer)
    elif args.runc_dir:
        make_goldens(args, tokenizer)
    else:
        p.error("give --write-ids DIR or --runc-dir DIR")


if __name__ == "__main__":
    main()
