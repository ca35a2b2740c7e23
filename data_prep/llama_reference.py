#!/usr/bin/python3
"""An independent LLaMA-2 reference in PyTorch, for goldens only (never on llt's run-time path).

Written from the design of Meta's llama/model.py (Llama 2): RMSNorm computed in fp32, rotary
embeddings in the interleaved-pair convention done with complex numbers (torch.view_as_complex),
grouped-query attention with repeat_kv, SwiGLU with Meta's multiple_of / ffn_dim_multiplier
hidden size (or an explicit hidden_dim, as llama2.c and HF state it), a causal mask, an optional
key/value cache and an optional tied classifier (llama2.c shared weights). Parameter names are
Meta's ("layers.3.attention.wq.weight"). No fairscale: plain nn.Linear / nn.Embedding.

It shares no code with the C++ model (lib/llt/model.cpp), which rotates with real arithmetic
(cos/sin tables); this file rotates with complex multiplication.

Also here: a reader for llama2.c's legacy .bin checkpoints (7 int32 header + fp32 weights) and
greedy generation that follows llama2.c run.c's loop (BOS first, stop when BOS is generated).

Shapes: B batch, T new tokens, S attended positions, D dim, H heads, KV kv heads, hd head dim,
F ffn hidden size, V vocab.
"""

import json
import math
import struct
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BOS_ID = 1  # SentencePiece <s> in LLaMA-2 and llama2.c tokenizers
EOS_ID = 2  # </s>


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None  # None = n_heads (Meta params.json may omit it)
    vocab_size: int = 32000
    multiple_of: int = 256  # SwiGLU hidden size rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    hidden_dim: Optional[int] = None  # explicit F (llama2.c, HF); None = Meta's rule
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False  # output.weight is tok_embeddings.weight

    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def ffn_hidden(self) -> int:
        """F: hidden_dim if given, else Meta's FeedForward rule applied to 4 * dim."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in fp32, cast back to x's dtype, then times weight (Meta)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_frequencies(head_dim: int, end: int, theta: float) -> torch.Tensor:
    """(end, hd/2) complex64: e^(i * pos * theta^(-2j/hd)) for pair j at position pos."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(end, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x (B, T, heads, hd): pairs (2j, 2j+1) as complex numbers times freqs (T, hd/2); fp32 math."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, heads, hd/2)
    out = torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3)
    return out.type_as(x)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, S, KV, hd) -> (B, S, KV * n_rep, hd); kv head k serves query heads k*n_rep..+n_rep-1."""
    if n_rep == 1:
        return x
    b, s, kv, hd = x.shape
    return x[:, :, :, None, :].expand(b, s, kv, n_rep, hd).reshape(b, s, kv * n_rep, hd)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads()
        self.head_dim = args.head_dim()
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)
        self.cache_k: Optional[torch.Tensor] = None  # (B, max_len, KV, hd) when caching
        self.cache_v: Optional[torch.Tensor] = None

    def forward(self, x, start_pos: int, freqs: torch.Tensor, mask: Optional[torch.Tensor]):
        b, t, _ = x.shape
        xq = self.wq(x).view(b, t, self.n_heads, self.head_dim)
        xk = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim)
        xq, xk = rotate(xq, freqs), rotate(xk, freqs)
        if self.cache_k is not None:
            self.cache_k[:b, start_pos:start_pos + t] = xk
            self.cache_v[:b, start_pos:start_pos + t] = xv
            keys = self.cache_k[:b, :start_pos + t]  # (B, S, KV, hd)
            values = self.cache_v[:b, :start_pos + t]
        else:
            assert start_pos == 0, "without a cache the sequence starts at position 0"
            keys, values = xk, xv
        n_rep = self.n_heads // self.n_kv_heads
        keys = repeat_kv(keys, n_rep).transpose(1, 2)  # (B, H, S, hd)
        values = repeat_kv(values, n_rep).transpose(1, 2)
        q = xq.transpose(1, 2)  # (B, H, T, hd)
        scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(self.head_dim)  # (B, H, T, S)
        if mask is not None:
            scores = scores + mask
        probs = F.softmax(scores.float(), dim=-1).type_as(q)
        out = torch.matmul(probs, values).transpose(1, 2).contiguous().view(b, t, -1)
        return self.wo(out)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = args.ffn_hidden()
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, start_pos, freqs, mask):
        h = x + self.attention(self.attention_norm(x), start_pos, freqs, mask)
        return h + self.feed_forward(self.ffn_norm(h))


def causal_mask(t: int, start_pos: int, device=None) -> torch.Tensor:
    """(T, start_pos + T) fp32: 0 where query i (at start_pos + i) may see key j, -inf after."""
    mask = torch.full((t, t), float("-inf"), device=device).triu(1)
    return torch.hstack([torch.zeros((t, start_pos), device=device), mask])


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size,
                                                                 bias=False)
        self.freqs = rope_frequencies(args.head_dim(), args.max_seq_len, args.rope_theta)

    def start_cache(self, batch: int, max_len: int):
        """Zeroed per-layer KV caches; forward() then writes at start_pos, attends to [0, end)."""
        dtype = self.tok_embeddings.weight.dtype
        for layer in self.layers:
            a = layer.attention
            a.cache_k = torch.zeros(batch, max_len, a.n_kv_heads, a.head_dim, dtype=dtype)
            a.cache_v = torch.zeros(batch, max_len, a.n_kv_heads, a.head_dim, dtype=dtype)

    def stop_cache(self):
        for layer in self.layers:
            layer.attention.cache_k = layer.attention.cache_v = None

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """tokens (B, T) int64 at positions [start_pos, start_pos+T) -> logits (B, T, V) fp32."""
        _, t = tokens.shape
        h = self.tok_embeddings(tokens)
        freqs = self.freqs[start_pos:start_pos + t]
        mask = causal_mask(t, start_pos).type_as(h) if t > 1 else None
        for layer in self.layers:
            h = layer(h, start_pos, freqs, mask)
        h = self.norm(h)
        weight = self.tok_embeddings.weight if self.output is None else self.output.weight
        return F.linear(h, weight).float()


# ------------------------------------------------------------------------------------------
# llama2.c legacy .bin (run.c's format): header int32 dim, hidden_dim, n_layers, n_heads,
# n_kv_heads, vocab_size (negative = separate classifier), seq_len; then fp32 tensors, each in
# PyTorch (out, in) order, grouped by kind across layers.

def read_llama2c_bin(path: str) -> Tuple[ModelArgs, dict]:
    with open(path, "rb") as f:
        blob = f.read()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack_from("7i", blob, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                     vocab_size=vocab, hidden_dim=hidden, max_seq_len=seq_len,
                     tie_embeddings=shared)
    data = np.frombuffer(blob, dtype="<f4", offset=28)
    hd = dim // n_heads
    kv_dim = n_kv_heads * hd
    offset = 0

    def take(*shape):
        nonlocal offset
        n = int(np.prod(shape))
        if offset + n > data.size:
            raise ValueError(f"{path}: file too short for tensor of shape {shape}")
        arr = torch.from_numpy(data[offset:offset + n].copy()).view(*shape)
        offset += n
        return arr

    sd = {"tok_embeddings.weight": take(vocab, dim)}
    per_layer = [("attention_norm.weight", (dim,)), ("attention.wq.weight", (dim, dim)),
                 ("attention.wk.weight", (kv_dim, dim)), ("attention.wv.weight", (kv_dim, dim)),
                 ("attention.wo.weight", (dim, dim)), ("ffn_norm.weight", (dim,)),
                 ("feed_forward.w1.weight", (hidden, dim)),
                 ("feed_forward.w2.weight", (dim, hidden)),
                 ("feed_forward.w3.weight", (hidden, dim))]
    for name, shape in per_layer:
        for layer in range(n_layers):
            sd[f"layers.{layer}.{name}"] = take(*shape)
    sd["norm.weight"] = take(dim)
    take(seq_len, hd // 2)  # legacy freq_cis_real, unused (recomputed)
    take(seq_len, hd // 2)  # legacy freq_cis_imag
    if not shared:
        sd["output.weight"] = take(vocab, dim)
    if offset != data.size:
        raise ValueError(f"{path}: {data.size - offset} trailing floats after the weights")
    return args, sd


def build_model(args: ModelArgs, state_dict: dict) -> Transformer:
    """A Transformer holding exactly `state_dict` (strict: every name must match)."""
    model = Transformer(args)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------
# Greedy generation as llama2.c run.c does it: the sequence starts with the prompt ids (BOS
# first), the model is run for `steps` positions in total (pos = 0 .. steps-1), each run at a
# position past the prompt appends argmax(logits); generation stops when BOS is produced. So
# len(prompt_ids) + len(generated) <= steps + 1 (the last generated id is never fed back).

@dataclass
class GreedyResult:
    ids: List[int]           # generated ids only, without the stopping BOS
    stopped_by: str          # "bos" | "eos" | "steps"
    min_margin: float        # smallest top1 - top2 logit gap over the generated steps


def greedy_generate(model: Transformer, prompt_ids: List[int], steps: int,
                    use_cache: bool = True, stop_ids=(BOS_ID,)) -> GreedyResult:
    if not 1 <= len(prompt_ids) <= steps:
        raise ValueError(f"prompt of {len(prompt_ids)} ids does not fit in {steps} steps")
    seq = list(prompt_ids)
    generated, margin = [], float("inf")
    if use_cache:
        model.start_cache(1, steps)
    pos = 0
    stopped_by = "steps"
    # First call prefills the whole prompt (positions [0, n)); then one token per call.
    while pos < steps:
        if use_cache:
            feed = seq[pos:len(seq)] if pos == 0 else seq[pos:pos + 1]
            logits = model(torch.tensor([feed]), start_pos=pos)[0, -1]
            pos += len(feed)
        else:
            logits = model(torch.tensor([seq]))[0, -1]
            pos = len(seq)
        top2 = torch.topk(logits, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        if nxt in stop_ids:
            stopped_by = "bos" if nxt == BOS_ID else "eos"
            break
        seq.append(nxt)
        generated.append(nxt)
    if use_cache:
        model.stop_cache()
    return GreedyResult(generated, stopped_by, margin)
