#!/usr/bin/python3
"""Peer baseline (c): WeNet's MoEFFNLayer algorithm in PyTorch eager.

The per-expert loop of wenet/transformer/positionwise_feed_forward.py
(MoEFFNLayer), re-stated here (not copied): a bias-free gate, top-k logits,
softmax over those k, then for each expert the tokens that picked it run
through w_2(act(w_1 x)) and are added back with their gate weight.

Prints one JSON object with median forward and forward+backward times.
Usage: moe_pytorch.py --tokens 256 --hidden 1024 --threads 1 [--device cuda --dtype bfloat16]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch


class ExpertFFN(torch.nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.w_1 = torch.nn.Linear(d_model, d_hidden)
        self.w_2 = torch.nn.Linear(d_hidden, d_model)
        self.activation = torch.nn.SiLU()

    def forward(self, x):
        return self.w_2(self.activation(self.w_1(x)))


class LoopMoE(torch.nn.Module):
    def __init__(self, d_model, d_hidden, n_expert, n_expert_activated):
        super().__init__()
        self.gate = torch.nn.Linear(d_model, n_expert, bias=False)
        self.experts = torch.nn.ModuleList(ExpertFFN(d_model, d_hidden) for _ in range(n_expert))
        self.k = n_expert_activated

    def forward(self, xs):  # xs: [N, D]
        router = self.gate(xs)
        logits, selected = torch.topk(router, self.k)
        weights = torch.softmax(logits, dim=1, dtype=torch.float).to(xs.dtype)
        output = torch.zeros_like(xs)
        for i, expert in enumerate(self.experts):
            token_ids, slot = torch.where(selected == i)
            if token_ids.numel() == 0:
                continue
            output[token_ids] += weights[token_ids, slot, None] * expert(xs[token_ids])
        return output


def time_sample(fn, seconds, sync):
    fn()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        sync()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sample-seconds", type=float, default=0.05)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = p.parse_args()
    if a.device == "cpu" and os.environ.get("OPENBLAS_NUM_THREADS") != str(a.threads):
        sys.exit("moe_pytorch.py: set OPENBLAS_NUM_THREADS=%d to match --threads" % a.threads)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    moe = LoopMoE(a.d_model, a.hidden, a.experts, a.top_k).to(a.device, dtype)
    x = torch.randn(a.tokens, a.d_model).to(a.device, dtype)
    x_grad = x.clone().requires_grad_(True)
    probe = torch.randn(a.tokens, a.d_model).to(a.device, dtype)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def forward():
        with torch.no_grad():
            moe(x)

    def forward_backward():
        moe.zero_grad(set_to_none=True)
        x_grad.grad = None
        (moe(x_grad) * probe).sum().backward()

    fwd, fwdbwd = [], []
    for _ in range(a.rounds):
        fwd.append(time_sample(forward, a.sample_seconds, sync))
        fwdbwd.append(time_sample(forward_backward, a.sample_seconds, sync))
    print(json.dumps({
        "variant": "pytorch_loop", "torch": torch.__version__, "tokens": a.tokens, "d_hidden": a.hidden,
        "threads": torch.get_num_threads(), "device": a.device, "dtype": a.dtype,
        "forward_ms": statistics.median(fwd) * 1e3,
        "forward_backward_ms": statistics.median(fwdbwd) * 1e3,
    }))


if __name__ == "__main__":
    main()
