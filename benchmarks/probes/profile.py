"""GPU time of one decode step by kernel family (torch.profiler over the TVM runtime's kernels)."""
import re, sys
from collections import defaultdict
from pathlib import Path
import numpy as np
bundle = Path(sys.argv[1])
sys.path[:0] = [str(bundle / "site"), str(bundle)]
from runtime.model import CompiledModel
import torch
from torch.profiler import profile, ProfilerActivity

STEPS = 20
for art in sys.argv[2:]:
    m = CompiledModel(art)
    m.prefill(np.arange(16, dtype=np.int32))
    for i in range(5):
        m.decode(5, 16 + i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(STEPS):
            m.decode(5, 21 + i)
        torch.cuda.synchronize()
    fam = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = re.sub(r"_n\d+.*|_kernel$|\d+$", "", e.name)
        name = re.sub(r"(_kernel)?(\d+)?$", "", name)
        t = getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0)
        fam[name][0] += 1
        fam[name][1] += t
    total = sum(v[1] for v in fam.values())
    print(f"{art}: {sum(v[0] for v in fam.values()) / STEPS:.0f} GPU activities per step, {total / STEPS / 1e3:.3f} ms of GPU time per step")
    for k, (n, t) in sorted(fam.items(), key=lambda kv: -kv[1][1])[:16]:
        print(f"  {k[:60]:<60} {n / STEPS:6.0f} per step {t / STEPS:9.1f} us ({100 * t / total:4.1f}%)")
    del m
