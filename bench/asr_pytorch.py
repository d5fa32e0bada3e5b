#!/usr/bin/env python3
"""Reference for `moekit bench asr`: the same U2++ Conformer encoder + CTC in
PyTorch eager, written the way WeNet computes it (rel-pos attention without
rel_shift, causal convolution module with caches, macaron FFNs) and with
WeNet's MoEFFNLayer algorithm: a Python loop over experts with torch.where
and index_add. It loads a MoEKit model directory (config.yaml +
model.safetensors), so both sides run identical weights, and prints the
same JSON fields as `moekit bench asr` (RTF full context and chunk by chunk).

  bench/asr_pytorch.py MODEL_DIR --threads 1 --seconds 10 --chunk-size 16

--quantize experts|linear runs PyTorch's dynamic int8 quantization
(torch.ao.quantization.quantize_dynamic, qint8 weights, on the oneDNN
engine) of the experts' linear maps, or of every linear map as WeNet's
runtime export does, instead of float32.
"""
import argparse
import json
import math
import time

import torch
import yaml

from safetensors_io import read_safetensors




def act(name):
    return {"swish": torch.nn.functional.silu, "relu": torch.relu, "gelu": torch.nn.functional.gelu}[name]


def dynamic_int8(w, b):
    """torch.nn.Linear(w, b) through quantize_dynamic: a dynamically quantized int8 linear map."""
    lin = torch.nn.Linear(w.size(1), w.size(0), bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None:
            lin.bias.copy_(b)
    return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)[0]


QUANTIZE = "none"  # none | experts | linear (set by --quantize)
ENGINE = "onednn"


class Lin:
    def __init__(self, w, p):
        self.w, self.b = w[p + ".weight"], w.get(p + ".bias")
        self.q = dynamic_int8(self.w, self.b) if QUANTIZE == "linear" else None

    def __call__(self, x):
        if self.q is not None:
            return self.q(x)
        return torch.nn.functional.linear(x, self.w, self.b)


def linear_map(w, b):
    """An expert's linear map: float, or quantize_dynamic's int8 one."""
    if QUANTIZE == "none":
        return lambda x: torch.nn.functional.linear(x, w, b)
    return dynamic_int8(w, b)


class LN:
    def __init__(self, w, p, eps=1e-5):
        self.w, self.b, self.eps = w[p + ".weight"], w[p + ".bias"], eps

    def __call__(self, x):
        return torch.nn.functional.layer_norm(x, (x.size(-1),), self.w, self.b, self.eps)


class DenseFFN:
    def __init__(self, w, p, f):
        self.w1, self.w2, self.f = Lin(w, p + ".w1"), Lin(w, p + ".w2"), f

    def __call__(self, x):
        return self.w2(self.f(self.w1(x)))


class MoEFFN:
    """WeNet's MoEFFNLayer.forward, on experts stored stacked by MoEKit."""

    def __init__(self, w, p, f, k):
        self.gate = w[p + ".gate.weight"]
        e = w[p + ".experts.w1"].size(0)
        self.experts = [(linear_map(w[p + ".experts.w1"][i], w.get(p + ".experts.b1")[i]),
                         linear_map(w[p + ".experts.w2"][i], w.get(p + ".experts.b2")[i])) for i in range(e)]
        self.f, self.k = f, k

    def __call__(self, xs):
        b, l, d = xs.size()
        xs = xs.view(-1, d)
        router = torch.nn.functional.linear(xs, self.gate)
        logits, selected = torch.topk(router, self.k)
        weights = torch.nn.functional.softmax(logits, dim=1, dtype=torch.float).to(dtype=xs.dtype)
        output = torch.zeros_like(xs)
        for i, (l1, l2) in enumerate(self.experts):
            mask = selected == i
            token_ids, ith = torch.where(mask)
            h = l2(self.f(l1(xs[token_ids])))
            output[token_ids] += weights[token_ids, ith, None] * h
        return output.view(b, l, d)


def positions(offset, size, d):
    pe = torch.zeros(offset + size, d)
    position = torch.arange(0, offset + size, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe[offset:].unsqueeze(0)


class Encoder:
    def __init__(self, w, conf):
        ec = conf["encoder_conf"]
        self.d, self.h = ec["output_size"], ec["attention_heads"]
        self.f = act(ec.get("activation_type", "swish"))
        self.k = ec.get("n_expert_activated", 2)
        self.moe = ec.get("mlp_type") == "moe"
        self.kernel = ec["cnn_module_kernel"]
        self.lorder = self.kernel - 1 if ec.get("causal") else 0
        self.mean, self.istd = w["encoder.global_cmvn.mean"], w["encoder.global_cmvn.istd"]
        self.c0w, self.c0b = w["encoder.embed.conv.0.weight"], w["encoder.embed.conv.0.bias"]
        self.c2w, self.c2b = w["encoder.embed.conv.2.weight"], w["encoder.embed.conv.2.bias"]
        self.out = Lin(w, "encoder.embed.out.0")
        self.after = LN(w, "encoder.after_norm")
        self.layers = []
        for i in range(ec["num_blocks"]):
            p = "encoder.encoders.%d." % i
            ffn = (lambda q: MoEFFN(w, q, self.f, self.k)) if self.moe else (lambda q: DenseFFN(w, q, self.f))
            self.layers.append({
                "q": Lin(w, p + "self_attn.linear_q"), "k": Lin(w, p + "self_attn.linear_k"),
                "v": Lin(w, p + "self_attn.linear_v"), "o": Lin(w, p + "self_attn.linear_out"),
                "pos": w[p + "self_attn.linear_pos.weight"], "u": w[p + "self_attn.pos_bias_u"],
                "bv": w[p + "self_attn.pos_bias_v"], "ff": ffn(p + "feed_forward"),
                "ffm": ffn(p + "feed_forward_macaron"), "pw1": (w[p + "conv_module.pointwise_conv1.weight"],
                                                               w[p + "conv_module.pointwise_conv1.bias"]),
                "dw": (w[p + "conv_module.depthwise_conv.weight"], w[p + "conv_module.depthwise_conv.bias"]),
                "cn": LN(w, p + "conv_module.norm"), "pw2": (w[p + "conv_module.pointwise_conv2.weight"],
                                                           w[p + "conv_module.pointwise_conv2.bias"]),
                "n_ff": LN(w, p + "norm_ff"), "n_mha": LN(w, p + "norm_mha"), "n_ffm": LN(w, p + "norm_ff_macaron"),
                "n_conv": LN(w, p + "norm_conv"), "n_final": LN(w, p + "norm_final")})
        self.ctc = Lin(w, "ctc.ctc_lo")

    def attention(self, L, x, pos, cache):
        b, t, _ = x.size()
        dk = self.d // self.h
        q = L["q"](x).view(b, t, self.h, dk)
        k = L["k"](x).view(b, t, self.h, dk).transpose(1, 2)
        v = L["v"](x).view(b, t, self.h, dk).transpose(1, 2)
        if cache is not None and cache[0] is not None:
            k = torch.cat([cache[0], k], 2)
            v = torch.cat([cache[1], v], 2)
        new_cache = (k, v)
        p = torch.nn.functional.linear(pos, L["pos"]).view(1, -1, self.h, dk).transpose(1, 2)
        qu = (q + L["u"]).transpose(1, 2)
        qv = (q + L["bv"]).transpose(1, 2)
        scores = (torch.matmul(qu, k.transpose(-2, -1)) + torch.matmul(qv, p.transpose(-2, -1))) / math.sqrt(dk)
        attn = torch.softmax(scores, dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).contiguous().view(b, t, self.d)
        return L["o"](y), new_cache

    def conv(self, L, x, cache):
        x = x.transpose(1, 2)
        if self.lorder > 0:
            x = torch.cat([cache, x], 2) if cache is not None else torch.nn.functional.pad(x, (self.lorder, 0))
            new_cache = x[:, :, -self.lorder:]
        else:
            new_cache = None
        x = torch.nn.functional.conv1d(x, L["pw1"][0], L["pw1"][1])
        x = torch.nn.functional.glu(x, dim=1)
        x = torch.nn.functional.conv1d(x, L["dw"][0], L["dw"][1], groups=x.size(1),
                                       padding=0 if self.lorder else (self.kernel - 1) // 2)
        x = self.f(L["cn"](x.transpose(1, 2))).transpose(1, 2)
        x = torch.nn.functional.conv1d(x, L["pw2"][0], L["pw2"][1])
        return x.transpose(1, 2), new_cache

    def forward(self, feats, offset=0, caches=None):
        x = (feats - self.mean) * self.istd
        x = torch.relu(torch.nn.functional.conv2d(x.unsqueeze(1), self.c0w, self.c0b, stride=2))
        x = torch.relu(torch.nn.functional.conv2d(x, self.c2w, self.c2b, stride=2))
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).contiguous().view(b, t, c * f)) * math.sqrt(self.d)
        cached = 0 if caches is None or caches[0][0] is None else caches[0][0][0].size(2)
        pos = positions(offset - cached, cached + t, self.d)
        new = []
        for i, L in enumerate(self.layers):
            att_cache, cnn_cache = (None, None) if caches is None else caches[i]
            x = x + 0.5 * L["ffm"](L["n_ffm"](x))
            y, att_cache = self.attention(L, L["n_mha"](x), pos, att_cache)
            x = x + y
            y, cnn_cache = self.conv(L, L["n_conv"](x), cnn_cache)
            x = x + y
            x = x + 0.5 * L["ff"](L["n_ff"](x))
            x = L["n_final"](x)
            new.append((att_cache, cnn_cache))
        x = self.after(x)
        self.last_out = x
        return torch.log_softmax(self.ctc(x), -1), x.size(1), new


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--feats", help="fbank features to run on (safetensors 'feats' [T, mel], from `moekit bench "
                    "asr --save-feats`) instead of random ones")
    ap.add_argument("--check", metavar="REFERENCE_PT",
                    help="verify this implementation against WeNet's outputs (the fixture's reference.pt, with "
                         "MODEL_DIR = `moekit import wenet` of the fixture) and exit")
    ap.add_argument("--quantize", choices=["none", "experts", "linear"], default="none",
                    help="quantize_dynamic int8: the experts' linear maps, or every linear map (WeNet's export)")
    ap.add_argument("--engine", default="onednn", help="PyTorch's quantized engine (onednn | qnnpack)")
    a = ap.parse_args()
    global QUANTIZE, ENGINE
    ENGINE = a.engine
    QUANTIZE = a.quantize
    if QUANTIZE != "none":
        torch.backends.quantized.engine = ENGINE
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    conf = yaml.safe_load(open(a.model_dir + "/config.yaml"))["architecture"]
    ec = conf["encoder_conf"]
    assert ec.get("input_layer", "conv2d") == "conv2d" and ec.get("pos_enc_layer_type") == "rel_pos" \
        and ec.get("macaron_style", True) and ec.get("use_cnn_module", True) \
        and ec.get("cnn_module_norm") == "layer_norm", "reference covers the benchmark architecture only"
    enc = Encoder(read_safetensors(a.model_dir + "/model.safetensors"), conf)
    if a.check:
        ref = torch.load(a.check)
        logp, _, _ = enc.forward(ref["fbank"].unsqueeze(0))
        diff = (logp[0] - ref["ctc_log_probs_full"]).abs().max().item()
        caches, offset, outs, fb = [(None, None)] * len(enc.layers), 0, [], ref["fbank"].unsqueeze(0)
        for cur in range(0, fb.size(1) - 7 + 1, 16):
            lp, t, caches = enc.forward(fb[:, cur:cur + 19], offset, caches)
            offset += t
            outs.append(enc.last_out)
        sdiff = (torch.cat(outs, 1)[0] - ref["encoder_out_chunk4_streaming"]).abs().max().item()
        print("max |difference| from WeNet: CTC log-probs full context %.2e, encoder out chunk-4 streaming %.2e"
              % (diff, sdiff))
        raise SystemExit(0 if max(diff, sdiff) <= 1e-4 else 1)
    torch.manual_seed(1)
    frames = int(1 + (a.seconds * 16000 - 400) // 160)
    feats = torch.randn(1, frames, conf.get("input_dim", 80)) * 3 + 10
    if a.feats:
        feats = read_safetensors(a.feats)["feats"].unsqueeze(0)
    context, rate = 7, 4
    window, stride = (a.chunk_size - 1) * rate + context, rate * a.chunk_size

    def full():
        enc.forward(feats)

    def streaming():
        caches, offset = [(None, None)] * len(enc.layers), 0
        for cur in range(0, frames - context + 1, stride):
            _, t, caches = enc.forward(feats[:, cur:cur + window], offset, caches)
            offset += t

    full()
    streaming()
    t_full, t_stream = [], []
    for _ in range(a.rounds):
        s = time.perf_counter(); full(); t_full.append(time.perf_counter() - s)
        s = time.perf_counter(); streaming(); t_stream.append(time.perf_counter() - s)
    med = lambda v: sorted(v)[len(v) // 2]
    print(json.dumps({"benchmark": "asr_encoder_ctc_pytorch_eager", "quantize": a.quantize, "threads": a.threads,
                      "seconds": a.seconds,
                      "chunk_size": a.chunk_size, "rtf_full": med(t_full) / a.seconds,
                      "rtf_chunk": med(t_stream) / a.seconds}, indent=2))


if __name__ == "__main__":
    main()
