"""Where a decode step's time goes, by call path: the runtime's decode(), the VM function called with every
argument, the bound closure, back to back, and TVM's own time_evaluator (GPU host, through a bundle).

    python3 benchmarks/probes/probe.py BUNDLE ARTIFACT [ARTIFACT ...]
"""
import sys
import time
from pathlib import Path

import numpy as np


def median_ms(f, n: int = 50) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times[5:]))


def probe(model) -> None:
    model.prefill(np.arange(16, dtype=np.int32))
    ids, pos = model._step
    args = [ids, pos, *model.caches, *model.weights]
    sync = model.dev.sync
    print(f"{model.dir} args: {len(args)}")
    print(" decode() incl. copies in/out     %.3f ms" % median_ms(lambda: model.decode(5, 20)))
    print(" _decode(...) + numpy             %.3f ms" % median_ms(lambda: model._decode(*args).numpy()))
    print(" _decode(...) + sync              %.3f ms" % median_ms(lambda: (model._decode(*args), sync())))
    model.vm.save_function("decode", "decode_saved", *args)
    f = model.vm["decode_saved"]
    print(" saved closure + sync             %.3f ms" % median_ms(lambda: (f(), sync())))

    def burst(n: int = 100) -> float:
        t = time.perf_counter()
        for _ in range(n):
            f()
        sync()
        return 1e3 * (time.perf_counter() - t) / n

    burst(10)
    print(" saved closure, 100 back to back  %.3f ms/call" % burst())
    t = time.perf_counter()
    for _ in range(100):
        pos.copyfrom(np.array([20], np.int32))
    print(" one copyfrom                     %.3f ms" % (1e3 * (time.perf_counter() - t) / 100))
    print(" time_evaluator                   %s" % model.vm.time_evaluator("decode_saved", model.dev, number=50,
                                                                          repeat=3)())


def compiled_models(argv: list[str]):
    """``BUNDLE ARTIFACT ...``: each artifact loaded with the bundle's runtime, one at a time."""
    bundle = Path(argv[0])
    sys.path[:0] = [str(bundle / "site"), str(bundle)]
    from runtime.model import CompiledModel

    return (CompiledModel(art) for art in argv[1:])


def main() -> None:
    for model in compiled_models(sys.argv[1:]):
        probe(model)


if __name__ == "__main__":
    main()
