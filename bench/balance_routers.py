#!/usr/bin/env python3
"""Gives a random benchmark model routers that spread frames over the experts.

With random weights the hidden states of a deep Conformer share one large
common component, so every frame's router logits rank the experts alike and
all frames pick the same two experts (`moekit bench asr` reports
busiest_expert_share 0.5 with top-2): a stream then reads about as many
expert bytes as a dense model does. A trained router spreads frames. This
script removes the common component from each MoE layer's router, layer by
layer in forward order: the gate weight G becomes G - (G mu) mu^T / |mu|^2,
mu being the mean over the given features' frames of that layer's input
(computed with the routers before it already changed), rescaled to the
logits' former spread. Top-k then depends on what distinguishes a frame.
Everything but the router weights is copied unchanged.

  moekit bench asr --save-model M --save-feats F.safetensors ...
  bench/balance_routers.py M OUT --feats F.safetensors

MODEL_DIR must hold float32 experts (quantize OUT afterwards if needed).
"""
import argparse
import json
import os
import shutil
import struct

import torch
import yaml

import asr_pytorch
from safetensors_io import read_safetensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--feats", required=True, help="fbank features (safetensors 'feats' [T, mel])")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(a.threads)
    conf = yaml.safe_load(open(a.model_dir + "/config.yaml"))["architecture"]
    weights = read_safetensors(a.model_dir + "/model.safetensors")
    assert conf["encoder_conf"].get("mlp_type") == "moe", "the model has no MoE layers"
    enc = asr_pytorch.Encoder(weights, conf)
    feats = read_safetensors(a.feats)["feats"].unsqueeze(0)

    inputs = {}
    call = asr_pytorch.MoEFFN.__call__

    def recording(self, xs):
        inputs[id(self)] = xs.reshape(-1, xs.size(-1)).clone()
        return call(self, xs)

    asr_pytorch.MoEFFN.__call__ = recording
    k = conf["encoder_conf"].get("n_expert_activated", 2)
    gates = {}
    for i, layer in enumerate(enc.layers):
        for slot, key in (("feed_forward_macaron", "ffm"), ("feed_forward", "ff")):
            moe = layer[key]
            enc.forward(feats)
            x = inputs[id(moe)]
            mu = x.mean(0)
            g = moe.gate
            balanced = g - torch.outer(g @ mu, mu) / mu.dot(mu)
            balanced *= (x @ g.t()).std() / (x @ balanced.t()).std()
            moe.gate = balanced

            def busiest(gate):
                picks = torch.topk(x @ gate.t(), k).indices.reshape(-1)
                return torch.bincount(picks, minlength=g.size(0)).max().item() / picks.numel()

            name = "encoder.encoders.%d.%s.gate.weight" % (i, slot)
            print("%s: busiest expert's share %.2f -> %.2f" % (name, busiest(g), busiest(balanced)), flush=True)
            gates[name] = balanced.contiguous()

    # The file as it was, with the router weights' bytes replaced.
    data = bytearray(open(a.model_dir + "/model.safetensors", "rb").read())
    (n,) = struct.unpack("<Q", data[:8])
    header, base = json.loads(data[8:8 + n]), 8 + n
    for name, t in gates.items():
        entry = header[name]
        lo, hi = entry["data_offsets"]
        assert entry["dtype"] == "F32", name + " is not float32"
        raw = t.numpy().tobytes()
        assert len(raw) == hi - lo, name
        data[base + lo:base + hi] = raw
    os.makedirs(a.out_dir, exist_ok=True)
    shutil.copy(a.model_dir + "/config.yaml", a.out_dir + "/config.yaml")
    tmp = a.out_dir + "/model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, a.out_dir + "/model.safetensors")


if __name__ == "__main__":
    main()
