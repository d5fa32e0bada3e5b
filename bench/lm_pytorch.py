#!/usr/bin/env python3
"""PyTorch eager reference of the LLaMA / Qwen2 / Mixtral decoder, written
the way Hugging Face transformers computes it (rotate-half RoPE, repeat_kv
for grouped-query attention, and Mixtral's sparse MoE block: softmax router,
top-k, renormalise, then a Python loop over experts with index_add_). It
reads the directory `moekit export hf` writes (config.json +
model.safetensors), so it is also an independent check of that layout.

  lm_pytorch.py logits HF_DIR --tokens 1,2,3 --out logits.f32   # raw little-endian fp32 [T, V]
  lm_pytorch.py perplexity HF_DIR --tokens-file ids.txt --window 64 --stride 32    # JSON nll, perplexity
  lm_pytorch.py train  HF_DIR --batch 8 --seq 128 --steps 5 --rounds 3 --threads 1   # JSON tokens/s
  lm_pytorch.py train  HF_DIR --device cuda --autocast bf16 ...                          # on a GPU
  lm_pytorch.py generate HF_DIR --prompt 16 --new-tokens 64 --threads 1                 # JSON tokens/s
  lm_pytorch.py generate HF_DIR --dtype bf16 ...   # the whole model in bfloat16, as transformers'
                                                   # torch_dtype=torch.bfloat16 loads it
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from safetensors_io import read_safetensors




class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c, bias):
        super().__init__()
        self.h, self.kv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"]
        d = c["hidden_size"]
        self.q_proj = nn.Linear(d, self.h * self.hd, bias=bias)
        self.k_proj = nn.Linear(d, self.kv * self.hd, bias=bias)
        self.v_proj = nn.Linear(d, self.kv * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.h * self.hd, d, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:  # HF DynamicCache: concatenation
            if cache:
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        rep = self.h // self.kv  # repeat_kv
        k = k[:, :, None].expand(B, self.kv, rep, k.shape[2], self.hd).reshape(B, self.h, k.shape[2], self.hd)
        v = v[:, :, None].expand(B, self.kv, rep, v.shape[2], self.hd).reshape(B, self.h, v.shape[2], self.hd)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.hd)
        S = k.shape[2]
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool).triu(S - T + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Expert(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoeBlock(nn.Module):
    """MixtralSparseMoeBlock: the per-expert loop."""

    def __init__(self, d, f, e, k):
        super().__init__()
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList([Expert(d, f) for _ in range(e)])
        self.e, self.k = e, k

    def forward(self, x):
        B, T, D = x.shape
        x = x.view(-1, D)
        logits = self.gate(x)
        weights = F.softmax(logits, dim=1, dtype=torch.float)
        weights, selected = torch.topk(weights, self.k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        mask = F.one_hot(selected, num_classes=self.e).permute(2, 1, 0)
        for i in range(self.e):
            idx, top = torch.where(mask[i])
            if top.numel() == 0:
                continue
            out.index_add_(0, top, self.experts[i](x[top]) * weights[top, idx, None])
        return out.view(B, T, D)


class Block(nn.Module):
    def __init__(self, c, bias, moe):
        super().__init__()
        d = c["hidden_size"]
        self.input_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.self_attn = Attention(c, bias)
        self.post_attention_layernorm = RMSNorm(d, c["rms_norm_eps"])
        if moe:
            self.block_sparse_moe = SparseMoeBlock(d, c["intermediate_size"], c["num_local_experts"], c["num_experts_per_tok"])
        else:
            self.mlp = MLP(d, c["intermediate_size"])

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        h = self.post_attention_layernorm(x)
        return x + (self.block_sparse_moe(h) if hasattr(self, "block_sparse_moe") else self.mlp(h))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        bias = c["model_type"] == "qwen2"
        moe = c["model_type"] == "mixtral"
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Block(c, bias, moe) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        hd = c["hidden_size"] // c["num_attention_heads"]
        self.inv_freq = 1.0 / (c.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))

    def forward(self, tokens, offset=0, caches=None):
        pos = torch.arange(offset, offset + tokens.shape[1], dtype=torch.float, device=tokens.device)
        emb = torch.cat([torch.outer(pos, self.inv_freq.to(tokens.device))] * 2, dim=-1)
        x = self.embed_tokens(tokens)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)  # as HF's rotary embedding returns them
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.lm_head(self.norm(x))


def load(hf_dir):
    c = json.load(open(f"{hf_dir}/config.json"))
    model = Model(c)
    state = {}
    for name, t in read_safetensors(f"{hf_dir}/model.safetensors").items():
        state[name[len("model."):] if name.startswith("model.") else name] = t
    if c.get("tie_word_embeddings"):
        state["lm_head.weight"] = state["embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        sys.exit(f"lm_pytorch: missing {missing} unexpected {unexpected}")
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["logits", "perplexity", "train", "generate"])
    ap.add_argument("hf_dir")
    ap.add_argument("--tokens", default="")
    ap.add_argument("--out")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens-file", help="perplexity: token ids, whitespace-separated")
    ap.add_argument("--window", type=int, default=0, help="perplexity: max_length (0: max_position_embeddings)")
    ap.add_argument("--stride", type=int, default=0, help="perplexity: stride (0: half the window)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="generate: the model's dtype")
    ap.add_argument("--device", default="cpu", help="train: cpu or cuda")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help="train: the forward pass under torch.autocast bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load(args.hf_dir)
    V = model.c["vocab_size"]
    if args.mode == "logits":
        tokens = torch.tensor([[int(t) for t in args.tokens.split(",")]])
        with torch.no_grad():
            logits = model(tokens)[0].float().contiguous()
        with open(args.out, "wb") as f:
            f.write(logits.numpy().astype("<f4").tobytes())
        return
    if args.mode == "perplexity":
        # Hugging Face's perplexity recipe (docs: "Perplexity of fixed-length
        # models"), batch 1: labels of positions an earlier window scored
        # are -100; the loss shifts them by one inside.
        ids = torch.tensor([[int(t) for t in open(args.tokens_file).read().split()]])
        window = args.window or model.c["max_position_embeddings"]
        stride = args.stride or max(1, window // 2)
        seq_len = ids.size(1)
        nll_sum, n_tokens, prev_end = 0.0, 0, 0
        with torch.no_grad():
            for begin in range(0, seq_len, stride):
                end = min(begin + window, seq_len)
                trg_len = end - prev_end
                input_ids = ids[:, begin:end]
                target_ids = input_ids.clone()
                target_ids[:, :-trg_len] = -100
                logits = model(input_ids).float()
                labels = target_ids[:, 1:]
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels.reshape(-1), ignore_index=-100)
                valid = int((labels != -100).sum())
                nll_sum += float(loss) * valid
                n_tokens += valid
                prev_end = end
                if end == seq_len:
                    break
        nll = nll_sum / n_tokens
        print(json.dumps({"impl": "pytorch", "nll": nll, "perplexity": math.exp(nll), "tokens": n_tokens}))
        return
    if args.mode == "train":
        device = torch.device(args.device)
        model = model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        batch = torch.randint(V, (args.batch, args.seq + 1)).to(device)

        def step():
            opt.zero_grad()
            # torch.autocast as a training script turns it on (fp32 master weights).
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
                logits = model(batch[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, V).float(), batch[:, 1:].reshape(-1))
            loss.backward()
            opt.step()

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        step()
        sync()
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            times.append(time.perf_counter() - t0)
        t = sorted(times)[len(times) // 2]
        print(json.dumps({"impl": "pytorch", "train_tokens_per_s": args.batch * args.seq * args.steps / t}))
        return
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    prompt = torch.randint(V, (1, args.prompt))
    with torch.no_grad():
        def run():
            caches = [[] for _ in model.layers]
            logits = model(prompt, 0, caches)
            tok = logits[:, -1:].argmax(-1)
            for i in range(args.new_tokens - 1):
                logits = model(tok, args.prompt + i, caches)
                tok = logits[:, -1:].argmax(-1)

        run()
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        t = sorted(times)[len(times) // 2]
    print(json.dumps({"impl": "pytorch", "generate_tokens_per_s": args.new_tokens / t}))


if __name__ == "__main__":
    main()
