#!/usr/bin/python3
"""Writes assets/data/demo_prompts.jsonl, the prompts of the demo's before/after sheet:
the seed's four prompts exactly as assets/data/seed_prompts.json holds them (no template), then
held-out Alpaca instructions (records 4000-4002 of the shipped file, never tokenized by the demo,
which trains on 0-199 and evaluates on 200-399) in the Alpaca template.

Usage: /usr/bin/python3 data_prep/make_demo_prompts.py   (from the repository root)
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
HELD_OUT = [4000, 4001, 4002]


def main():
    seed = json.loads((ROOT / "assets/data/seed_prompts.json").read_text())
    alpaca = json.loads((ROOT / "assets/data/alpaca/alpaca_data_first_5000.json").read_text())
    lines = [{"prompt": p, "template": "none"} for p in seed["prompts"]]
    for i in HELD_OUT:
        r = alpaca[i]
        lines.append({"instruction": r["instruction"], "input": r["input"], "template": "alpaca",
                      "source": f"alpaca_data_first_5000.json record {i}"})
    out = ROOT / "assets/data/demo_prompts.jsonl"
    out.write_text("".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines))
    print(f"wrote {out} ({len(lines)} prompts)")


if __name__ == "__main__":
    main()
