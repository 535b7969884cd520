"""GPU time of one decode step, or of one prefill, by kernel family: torch.profiler (CUPTI) over the kernels the
TVM runtime launches or replays, decode at positions 21-40 (GPU host, through a bundle; needs torch there).

    python3 benchmarks/probes/kernel_profile.py BUNDLE ARTIFACT [ARTIFACT ...]
    PREFILL=1024 python3 benchmarks/probes/kernel_profile.py BUNDLE ARTIFACT    # a 1024-token prefill instead
"""
import os
import re
import sys
from collections import defaultdict

import numpy as np

STEPS = 20


def family(kernel: str) -> str:
    """A kernel's name without its shape and numbering suffixes."""
    name = re.sub(r"_n\d+.*|_kernel$|\d+$", "", kernel)
    return re.sub(r"(_kernel)?(\d+)?$", "", name)


def profile_kernels(model, prefill: int = 0) -> None:
    """A decode step's kernels by family, or with ``prefill`` those of one prefill of that many tokens (all logits
    returned, as `prefill()` does by default)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model.prefill(np.arange(prefill or 16, dtype=np.int32))
    for i in range(5):
        model.decode(5, 16 + i)
    torch.cuda.synchronize()
    steps = 1 if prefill else STEPS
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            if prefill:
                model.prefill(np.arange(prefill, dtype=np.int32))
            else:
                model.decode(5, 21 + i)
        torch.cuda.synchronize()
    fam = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            fam[family(e.name)][0] += 1
            fam[family(e.name)][1] += getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0)
    total = sum(v[1] for v in fam.values())
    what = f"{prefill}-token prefill" if prefill else "step"
    print(f"{model.dir}: {sum(v[0] for v in fam.values()) / steps:.0f} GPU activities per {what}, "
          f"{total / steps / 1e3:.3f} ms of GPU time per {what}")
    for k, (n, t) in sorted(fam.items(), key=lambda kv: -kv[1][1])[:16]:
        print(f"  {k[:60]:<60} {n / steps:6.0f} per {what} {t / steps:9.1f} us ({100 * t / total:4.1f}%)")


def main() -> None:
    from probe import compiled_models  # this folder is on sys.path when run as a script

    for model in compiled_models(sys.argv[1:]):
        profile_kernels(model, int(os.environ.get("PREFILL", "0")))


if __name__ == "__main__":
    main()
