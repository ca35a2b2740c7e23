#!/usr/bin/python3
"""Writes tests/assets/tokenizer/goldens.json: reference encodings and decodings from Python.

The reference is Google's own SentencePiece Python binding (Debian's python3-sentencepiece), not
llt's C++ code. For each shipped tokenizer it records: vocab size and special ids, the ids of a
varied list of strings (no BOS/EOS) and their round-trip decode, decodes of hand-picked id lists
(byte-fallback pieces included), piece strings of some ids, and the sha256 of the model file
(from hashlib, an independent check of llt's SHA-256).

Run from the repository root, with Debian's Python (the python3 on PATH may not see the package):
    /usr/bin/python3 data_prep/make_tokenizer_goldens.py
Reads assets/tokenizers/llama2/tokenizer.model, assets/models/stories260K/tok512.model and
/work/shared/data (the seed prompts and the first Alpaca records; override with --shared-data).
"""
import argparse
import hashlib
import json
import pathlib

import sentencepiece as spm

TOKENIZERS = {
    "llama2": "assets/tokenizers/llama2/tokenizer.model",
    "tok512": "assets/models/stories260K/tok512.model",
}

# Edge cases: ASCII, accents, CJK, emoji (byte fallback), control whitespace, digits, spaces.
TEXTS = [
    "",
    "Hello world",
    "Hello, world!",
    "hello world",
    "x",
    " x",
    "  x",
    "x ",
    "Hello    world",
    "   leading spaces",
    "trailing spaces   ",
    " ",
    "   ",
    "a\nb",
    "\n",
    "\n\n",
    "line one\nline two\n",
    "tab\tseparated\tvalues",
    "\t",
    "0123456789",
    "3.14159 and 2,718 and 1e-5",
    "The year 2023 had 365 days.",
    "café naïve résumé façade",
    "Ünïcödé àccénts: ñ ç ø å ß",
    "中文分词测试",
    "日本語のテキスト",
    "한국어 텍스트",
    "Здравствуй, мир",
    "Γειά σου κόσμε",
    "emoji: 😀 🚀 👍🏽 ❤️",
    "🦙",
    "mixed 中文 and English 😀 text",
    "math: ∑ x² ≤ ∞, √2 ≈ 1.414",
    "quotes “curly” and ‘single’ — dash",
    "<s> </s> <unk> are not special in text",
    "<0x0A>",
    "▁already▁has▁the▁meta▁symbol",
    "code: for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "URL https://example.com/path?q=1&r=2#frag",
    "Once upon a time, there was a little girl named Lily.",
    "A" * 40,
    "\u00a0non-breaking\u00a0space",
    "zero\u200bwidth",
]

# Alpaca records whose fields are used as text: the first three, one with an input, two with
# curly quotes / superscripts (indices into alpaca_data_first_5000.json).
ALPACA_INDICES = [0, 1, 2, 5, 44, 116, 153]

# Id lists to decode, per tokenizer (byte-fallback pieces are ids 3..258 in both models:
# <0xNN> = 3 + NN).
DECODE_IDS = {
    "llama2": [
        [],
        [1],
        [2],
        [0],
        [1, 15043, 3186, 2],
        [15043, 3186],
        [29871, 13],
        [13],
        [13, 13],
        [3 + 0xE4, 3 + 0xB8, 3 + 0xAD],  # "中" as UTF-8 bytes
        [3 + 0xE4],  # a lone lead byte: invalid UTF-8
        [3 + 0xE4, 3 + 0xB8],  # a truncated sequence
        [3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80],  # "😀"
        [3 + 0x41, 3 + 0x42],  # "AB" spelled as bytes
        [29871],
        [259, 263],
        [31999],
        [921, 0, 921],
    ],
    "tok512": [
        [],
        [1],
        [2],
        [0],
        [1, 2],
        [3 + 0x0A],
        [3 + 0xC3, 3 + 0xA9],  # "é" as UTF-8 bytes
        [3 + 0xFF],  # not valid UTF-8 on its own
        [259, 260, 261, 262],
        [511],
        [1, 400, 450, 500, 2],
    ],
}

# Ids whose piece strings are recorded (specials, bytes, first normal pieces, the last piece).
PIECE_IDS = {
    "llama2": [0, 1, 2, 3, 4, 13, 16, 258, 259, 260, 263, 921, 3186, 15043, 29871, 29889, 31999],
    "tok512": [0, 1, 2, 3, 13, 258, 259, 260, 300, 400, 511],
}

# Strings whose piece_to_id is recorded (a non-piece maps to unk).
PIECE_STRINGS = ["<unk>", "<s>", "</s>", "<0x0A>", "▁the", "▁", "e", "not-a-piece-at-all"]


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_texts(shared_data):
    prompts = json.loads((shared_data / "seed_prompts.json").read_text(encoding="utf-8"))["prompts"]
    alpaca = json.loads(
        (shared_data / "alpaca" / "alpaca_data_first_5000.json").read_text(encoding="utf-8"))
    texts = list(TEXTS) + list(prompts)
    for i in ALPACA_INDICES:
        texts += [alpaca[i][key] for key in ("instruction", "input", "output") if alpaca[i][key]]
    return texts


def goldens_for(name, model_path, texts):
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    vocab = sp.get_piece_size()
    encode = []
    for text in texts:
        ids = sp.encode(text, out_type=int)
        encode.append({"text": text, "ids": ids, "decoded": sp.decode(ids)})
    decode = [{"ids": ids, "text": sp.decode(ids)} for ids in DECODE_IDS[name]]
    for case in decode:
        assert all(0 <= i < vocab for i in case["ids"]), case
    return {
        "name": name,
        "model": TOKENIZERS[name],
        "sha256": sha256_file(model_path),
        "vocab_size": vocab,
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "unk_id": sp.unk_id(),
        "pad_id": sp.pad_id(),
        "encode": encode,
        "decode": decode,
        "pieces": [{"id": i, "piece": sp.id_to_piece(i)} for i in PIECE_IDS[name]],
        "piece_to_id": [{"piece": p, "id": sp.piece_to_id(p)} for p in PIECE_STRINGS],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path("."),
                        help="repository root (default: the current directory)")
    parser.add_argument("--shared-data", type=pathlib.Path,
                        default=pathlib.Path("/work/shared/data"),
                        help="folder with seed_prompts.json and alpaca/")
    args = parser.parse_args()
    texts = load_texts(args.shared_data)
    out = {
        "generator": "data_prep/make_tokenizer_goldens.py",
        "reference": "sentencepiece (Python) " + spm.__version__,
        "tokenizers": [goldens_for(name, args.root / path, texts)
                       for name, path in TOKENIZERS.items()],
    }
    out_path = args.root / "tests" / "assets" / "tokenizer" / "goldens.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n = sum(len(t["encode"]) + len(t["decode"]) for t in out["tokenizers"])
    print(f"wrote {out_path} ({n} encode/decode cases)")


if __name__ == "__main__":
    main()
