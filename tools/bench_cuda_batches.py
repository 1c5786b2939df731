"""CUDA latency of slimnet's ratio-0.5 (round-to 8, l1) torchvision models at batch 1, 32 and 128, in float32 and
float16 (the models cast with ``.half()``), beside the original: a markdown table on stdout for docs/speed.md.

    python tools/bench_cuda_batches.py resnet50,vit_b_16,mobilenet_v2

Random weights (nothing downloaded); each pair is timed interleaved by :func:`slimnet.measure.latency.time_models`
(CUDA events, 10 warm-up and 50 timed runs). Needs a CUDA GPU.
"""

import copy
import sys

import torch
import torchvision

from slimnet.api import shrink
from slimnet.measure.latency import time_models

rows = []
for name in sys.argv[1].split(","):
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 224, 224)
    r = shrink(m, x, ratio=0.5, criterion="l1", round_to=8)
    theo = r.report["macs_before"] / r.report["macs_after"]
    for dtype in ("fp32", "fp16"):
        a, b = (
            (copy.deepcopy(m), copy.deepcopy(r.model))
            if dtype == "fp32"
            else (copy.deepcopy(m).half(), copy.deepcopy(r.model).half())
        )
        xx = x if dtype == "fp32" else x.half()
        for bs in (1, 32, 128):
            t = time_models(
                [("original", a), ("slim", b)],
                xx,
                backends=["torch-cuda"],
                batch_size=bs,
                warmup=10,
                runs=50,
                progress=False,
            )
            lat = t["latency_ms"]
            o, s = lat["original"]["torch-cuda"]["p50"], lat["slim"]["torch-cuda"]["p50"]
            speed = o / s
            cells = [name, dtype, bs, f"{theo:.2f}x", f"{o:.3f} ms", f"{s:.3f} ms"]
            cells += [f"{speed:.2f}x", f"{speed / theo:.0%}"]
            rows.append("| " + " | ".join(map(str, cells)) + " |")
            print(rows[-1], flush=True)
print("| model | dtype | batch | theoretical | original p50 | slimnet p50 | real speedup | efficiency |")
print("|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
