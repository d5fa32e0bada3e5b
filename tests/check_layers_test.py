#!/usr/bin/env python3
"""Tests scripts/check_layers.py: on a small tree it must name every include
that points up or sideways (file and line) and LibTorch in kernels/, and
pass a tree whose includes only point down. Usage: check_layers_test.py ROOT"""
import os
import pathlib
import subprocess
import sys
import tempfile


def run(script, root):
    p = subprocess.run([sys.executable, script, root], capture_output=True, text=True)
    return p.returncode, p.stdout


def main():
    script = os.path.join(sys.argv[1], "scripts", "check_layers.py")
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "core/check.h": "#pragma once\n",
            "kernels/simd.h": "#pragma once\n#include <cstdint>\n",
            "ops/linear.h": '#pragma once\n#include "moekit/kernels/simd.h"\n#include "moekit/core/check.h"\n',
            "nn/ffn.h": '#pragma once\n#include "moekit/ops/linear.h"\n',
            "moe/moe_layer.h": '#pragma once\n#include "moekit/ops/linear.h"\n',
            "models/m.h": '#include "moekit/nn/ffn.h"\n#include "moekit/moe/moe_layer.h"\n',
        }
        for name, text in files.items():
            path = pathlib.Path(tmp, "src", "moekit", name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        code, out = run(script, tmp)
        assert code == 0 and out == "", "a tree whose includes point down must pass:\n" + out
        bad = {
            "nn/ffn.h": '#pragma once\n#include "moekit/ops/linear.h"\n#include "moekit/moe/moe_layer.h"\n',
            "ops/linear.h": '#pragma once\n#include "moekit/nn/ffn.h"\n',
            "kernels/simd.h": "#pragma once\n#include <ATen/Parallel.h>\n",
            "scratch/x.h": "#pragma once\n",
        }
        for name, text in bad.items():
            path = pathlib.Path(tmp, "src", "moekit", name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        code, out = run(script, tmp)
        assert code == 1, "a bad tree must fail"
        for expected in ["src/moekit/nn/ffn.h:3: nn/ includes moe/ (sideways",
                         "src/moekit/ops/linear.h:2: ops/ includes nn/ (up",
                         "src/moekit/kernels/simd.h:2: kernels/ must not include LibTorch",
                         "src/moekit/scratch/x.h: folder 'scratch' is not in"]:
            assert expected in out, "missing %r in:\n%s" % (expected, out)
    code, out = run(script, sys.argv[1])
    assert code == 0, "the repository's own tree must pass:\n" + out
    print("check_layers: all cases as expected")


if __name__ == "__main__":
    main()
