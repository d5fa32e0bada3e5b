"""The environment every side-by-side benchmark driver runs both sides in."""
import json
import os
import subprocess


def run_json(cmd, env):
    """Runs a benchmark program and returns the JSON it prints."""
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)


def median(values):
    """The median; of the middle two for an even count (the upper one alone
    flattered the bandwidth fractions, the lower one the times)."""
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def bench_env(moekit, threads):
    """Threads pinned (LibTorch's OpenMP pool and OpenBLAS), and the OpenBLAS
    kernels MoEKit runs: where OpenBLAS does not know the CPU and falls back to
    pre-AVX2 kernels, `moekit` sets OPENBLAS_CORETYPE for itself
    (core/runtime.h, blas_core_upgrade); the PyTorch side gets the same
    variable here, so both multiply with the same kernels."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    info = json.loads(subprocess.run([moekit, "--threads", "1", "info", "--system", "--json"], env=env,
                                     check=True, capture_output=True, text=True).stdout)
    if info["blas"].get("core_replaced") and "OPENBLAS_CORETYPE" not in env:
        env["OPENBLAS_CORETYPE"] = info["blas"]["core"]
    return env
