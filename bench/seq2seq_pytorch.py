#!/usr/bin/python3
"""Peer baseline: the seq2seq model of MoEKit written plainly in PyTorch eager,
run on the same weights (a directory `moekit bench seq2seq --save-dir` wrote).

The architecture is re-stated from MoEKit's model documentation (pre-LN
encoder-decoder, tied embeddings scaled by sqrt(d_model), sinusoidal
positions, GShard top-2 gating renormalised); the MoE layer loops over its
experts as fairseq's MoE layer does (each expert runs on the tokens routed
to it), and decoding keeps per-layer key/value caches. The first batch's
greedy output is compared with MoEKit's (check.txt) before timing.

Prints one JSON line per batch size: tokens_per_s and whether the greedy
tokens and the first step's logits (within 1e-3) matched MoEKit's. Usage:
  seq2seq_pytorch.py MODEL_DIR --batch 1 32 --steps 24 --source-len 24 --threads 1
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import yaml

from safetensors_io import read_safetensors




def sinusoid(offset, length, d):
    pos = torch.arange(offset, offset + length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe = torch.zeros(length, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class Peer:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.yaml")) as f:
            self.c = yaml.safe_load(f)["architecture"]
        self.w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.d = self.c["d_model"]
        self.h = self.c["heads"]
        self.act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "swish": torch.nn.functional.silu}[
            self.c.get("activation", "relu")]

    def ln(self, p, x):
        return torch.nn.functional.layer_norm(x, (self.d,), self.w[p + ".weight"], self.w[p + ".bias"], 1e-5)

    def lin(self, p, x):
        return torch.nn.functional.linear(x, self.w[p + ".weight"], self.w.get(p + ".bias"))

    def heads(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.h, self.d // self.h).transpose(1, 2)

    def attend(self, q, k, v, mask):  # q [B,H,T1,dk], k/v [B,H,T2,dk], mask [B,1,T1|1,T2] bool or None
        s = q @ k.transpose(-1, -2) / math.sqrt(self.d // self.h)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        x = torch.softmax(s, -1) @ v
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.d)

    def ffn(self, p, x, task):
        if p + ".w1.weight" in self.w:
            return self.lin(p + ".w2", self.act(self.lin(p + ".w1", x)))
        gate = self.w[p + ".gate.weight"]
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        if p + ".task_embedding" in self.w:  # task routing: one decision per sentence
            logits = (self.w[p + ".task_embedding"][task] @ gate.t()).repeat_interleave(t, 0)
        else:
            logits = flat @ gate.t()
        probs = torch.softmax(logits.float(), -1)
        top, idx = probs.topk(2, -1)
        top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        w1, b1, w2, b2 = (self.w[p + ".experts." + n] for n in ("w1", "b1", "w2", "b2"))
        for e in range(gate.shape[0]):  # fairseq: each expert on its own tokens
            rows, slot = torch.where(idx == e)
            if rows.numel() == 0:
                continue
            y = self.act(flat[rows] @ w1[e].t() + b1[e]) @ w2[e].t() + b2[e]
            out.index_add_(0, rows, y * top[rows, slot, None])
        return out.view(b, t, d)

    def embed(self, tokens, offset):
        return self.w["embed_tokens.weight"][tokens] * math.sqrt(self.d) + sinusoid(offset, tokens.shape[1], self.d)

    def encode(self, src, task):
        x = self.embed(src, 0)
        for l in range(self.c["encoder_layers"]):
            p = f"encoder.layers.{l}"
            h = self.ln(p + ".self_attn_layer_norm", x)
            a = self.attend(self.heads(self.lin(p + ".self_attn.linear_q", h)),
                            self.heads(self.lin(p + ".self_attn.linear_k", h)),
                            self.heads(self.lin(p + ".self_attn.linear_v", h)), None)
            x = x + self.lin(p + ".self_attn.linear_out", a)
            x = x + self.ffn(p + ".ffn", self.ln(p + ".final_layer_norm", x), task)
        memory = self.ln("encoder.layer_norm", x)
        cross = []
        for l in range(self.c["decoder_layers"]):
            p = f"decoder.layers.{l}.encoder_attn"
            cross.append((self.heads(self.lin(p + ".linear_k", memory)), self.heads(self.lin(p + ".linear_v", memory))))
        return cross

    def step(self, cache, cross, tokens, pos, task):
        y = self.embed(tokens.unsqueeze(1), pos)
        for l in range(self.c["decoder_layers"]):
            p = f"decoder.layers.{l}"
            h = self.ln(p + ".self_attn_layer_norm", y)
            k, v = self.heads(self.lin(p + ".self_attn.linear_k", h)), self.heads(self.lin(p + ".self_attn.linear_v", h))
            if cache[l] is not None:
                k, v = torch.cat([cache[l][0], k], 2), torch.cat([cache[l][1], v], 2)
            cache[l] = (k, v)
            y = y + self.lin(p + ".self_attn.linear_out", self.attend(self.heads(self.lin(p + ".self_attn.linear_q", h)), k, v, None))
            h = self.ln(p + ".encoder_attn_layer_norm", y)
            y = y + self.lin(p + ".encoder_attn.linear_out",
                             self.attend(self.heads(self.lin(p + ".encoder_attn.linear_q", h)), cross[l][0], cross[l][1], None))
            y = y + self.ffn(p + ".ffn", self.ln(p + ".final_layer_norm", y), task)
        return self.ln("decoder.layer_norm", y)[:, 0] @ self.w["embed_tokens.weight"].t()

    def greedy(self, src, steps):
        task = torch.zeros(src.shape[0], dtype=torch.long)
        cross = self.encode(src, task)
        cache = [None] * self.c["decoder_layers"]
        prev = torch.full((src.shape[0],), self.c["bos_id"], dtype=torch.long)
        out = []
        for t in range(steps):
            prev = self.step(cache, cross, prev, t, task).argmax(-1)
            out.append(prev)
        return torch.stack(out, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--source-len", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peer = Peer(args.model_dir)
    matched = None
    check = os.path.join(args.model_dir, "check.txt")
    with torch.no_grad():
        if os.path.exists(check):
            # MoEKit's sources, greedy tokens and first-step logits.
            rows = [[float(v) for v in line.split()] for line in open(check)]
            n = len(rows) // 3
            src, want = torch.tensor(rows[:n]).long(), torch.tensor(rows[n: 2 * n]).long()
            logits = torch.tensor(rows[2 * n:])
            task = torch.zeros(n, dtype=torch.long)
            first = peer.step([None] * peer.c["decoder_layers"], peer.encode(src, task),
                              torch.full((n,), peer.c["bos_id"], dtype=torch.long), 0, task)
            logits_diff = (first - logits).abs().max().item()
            matched = bool(torch.equal(peer.greedy(src, want.shape[1]), want)) and logits_diff < 1e-3
        for batch in args.batch:
            src = torch.randint(3, peer.c["vocab_size"], (batch, args.source_len))
            peer.greedy(src, args.steps)  # warm-up
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                peer.greedy(src, args.steps)
                times.append(time.perf_counter() - start)
            print(json.dumps({"batch": batch, "tokens_per_s": batch * args.steps / statistics.median(times),
                              "greedy_matches_moekit": matched}), flush=True)


if __name__ == "__main__":
    main()
