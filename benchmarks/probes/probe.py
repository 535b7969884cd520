"""Where a decode step's 2.3 ms go: argument passing, the graph, the logits copy."""
import sys, time
from pathlib import Path
import numpy as np
bundle = Path(sys.argv[1])
sys.path[:0] = [str(bundle / "site"), str(bundle)]
from runtime.model import CompiledModel

def med(f, n=50):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts[5:]))

for art in sys.argv[2:]:
    m = CompiledModel(art)
    m.prefill(np.arange(16, dtype=np.int32))
    ids, pos = m._step
    print(art, "args:", 2 + len(m.caches) + len(m.weights))
    print(" decode() incl. copies in/out     %.3f ms" % med(lambda: m.decode(5, 20)))
    print(" _decode(...) + numpy             %.3f ms" % med(lambda: m._decode(ids, pos, *m.caches, *m.weights).numpy()))
    print(" _decode(...) + sync              %.3f ms" % med(lambda: (m._decode(ids, pos, *m.caches, *m.weights), m.dev.sync())))
    m.vm.save_function("decode", "decode_saved", ids, pos, *m.caches, *m.weights)
    f = m.vm["decode_saved"]
    print(" saved closure + sync             %.3f ms" % med(lambda: (f(), m.dev.sync())))
    def burst(n=100):
        t = time.perf_counter()
        for _ in range(n): f()
        m.dev.sync()
        return 1e3 * (time.perf_counter() - t) / n
    burst(10)
    print(" saved closure, 100 back to back  %.3f ms/call" % burst())
    t = time.perf_counter()
    for _ in range(100): pos.copyfrom(np.array([20], np.int32))
    print(" one copyfrom                     %.3f ms" % (1e3 * (time.perf_counter() - t) / 100))
    ev = m.vm.time_evaluator("decode_saved", m.dev, number=50, repeat=3)
    print(" time_evaluator                   %s" % ev())
    del m
