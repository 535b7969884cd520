"""benchmarks/kernels.py on the CPU: the plan is consistent and the report turns a result into docs tables."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernels():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_covers_the_issue_and_every_case_has_its_kernel(kernels):
    specs, cases = kernels.plan()
    # every case's kernel is built; a chain case (tag "layer") is no kernel, its members are
    assert {c["kernel"] for c in cases if c["kind"] != "chain"} <= set(specs)
    assert {q["kernel"] for c in cases for q in c.get("members", ())} <= set(specs)
    shapes = {(c["n"], c["k"]) for c in cases if c["tag"] == "main"}
    assert shapes == set(kernels.SHAPES)
    decode = {(c["n"], c["k"], c["m"]) for c in cases if c["tag"] == "main" and c["kind"] == "decode"}
    assert decode == {(n, k, m) for n, k in kernels.SHAPES for m in (1, 2, 4, 8)}
    assert {c["sparsity"] for c in cases} >= {0.3, 0.5, 0.7}
    assert {c["rows"] for c in cases if c["kind"] == "prefill"} >= {1, 4, 8, 16}
    # wgmma variants only where their sm_90a code can be built; ablations never count as results
    assert not any(c["tag"] == "wgmma" for c in cases)
    assert any(c["tag"] == "wgmma" for c in kernels.plan(archs=("sm_90a",))[1])
    assert {c["cfg"].split("_no_")[-1] for c in cases if c["tag"] == "ablation"} >= {"weights", "activations", "math", "meta"}
    # every rotated decode launch beside the same launch unrotated, on balanced and unequal rows
    rot = {(c["n"], c["k"], c["m"], c["cfg"], c["alloc"]) for c in cases if c["tag"] == "rotate"}
    assert rot and all((n, k, m, cfg[:-1], a) in rot for n, k, m, cfg, a in rot if cfg.endswith("r"))
    # every decode shape and M has its dense int4 baseline
    assert all(kernels.kernel_name("dense_int4", n, k, m, 1) in specs for n, k, m in decode)


def test_report_fills_the_doc_between_markers(kernels, tmp_path):
    doc = json.loads((ROOT / "benchmarks" / "results" / "kernels_h100.json").read_text())
    page = tmp_path / "perf.md"
    page.write_text("before\n<!-- kernels -->\nold\n<!-- /kernels -->\nafter\n")
    kernels.write_doc(doc, page)
    text = page.read_text()
    assert text.startswith("before\n<!-- kernels -->\n") and text.endswith("<!-- /kernels -->\nafter\n")
    assert "old" not in text and "| 12288 x 4096 | 1 |" in text and "nan" not in text
    no_markers = tmp_path / "no_markers.md"
    no_markers.write_text("text\n")
    with pytest.raises(SystemExit):
        kernels.write_doc(doc, no_markers)


def test_report_shows_the_same_byte_copy_and_the_decode_ablation_when_measured(kernels):
    doc = json.loads((ROOT / "benchmarks" / "results" / "kernels_h100.json").read_text())
    assert "same-byte copy" not in kernels.summary(doc)  # results from before these columns: as they were
    decode = [r for r in doc["results"] if r["tag"] == "main" and r["kind"] == "decode"]
    for r in decode:
        r["copy_same_us"] = r["time_us"] / 2
    full = dict(decode[0], tag="ablation", cfg="w8u4l1hs1056f", time_us=20.0)
    doc["results"] += [full, dict(full, cfg=full["cfg"] + "_no_math", time_us=10.0)]
    text = kernels.summary(doc)
    assert "same-byte copy" in text and f"| {decode[0]['time_us'] / 2:.1f} (50%) |" in text
    assert "| 12288 x 4096 | 1 | w8u4l1hs1056f | 4 | 20.0 | 10.0 | - |" in text
    # a rotated launch beside the plain one, balanced and unequal rows
    rot = dict(decode[0], tag="rotate", cfg="w32u4l2hs132fd92", time_us=30.0)
    doc["results"] += [rot, dict(rot, cfg=rot["cfg"] + "r", time_us=24.0), dict(rot, alloc="layer", time_us=33.0)]
    text = kernels.summary(doc)
    assert "| 12288 x 4096 | 1 | w32u4l2hs132fd92 | 30.0 | 24.0 | 33.0 | - |" in text
    assert "per-matrix longest-first" not in text  # no warp-plan results, no table


def test_only_selects_by_tag_substring_or_exact_name(kernels, tmp_path, capsys):
    specs, cases = kernels.plan()
    name = kernels.kernel_name("bsr_decode", 4096, 4096, 1, 1)
    exact = [c for c in cases if kernels.selected(c, "=" + name)]
    assert exact and all(c["kernel"] == name for c in exact)
    assert len([c for c in cases if kernels.selected(c, name)]) > len(exact)  # substring: its configurations too
    assert all(c["tag"] == "unequal rows" for c in cases if kernels.selected(c, "unequal rows"))
    # !X: the rest, so a run too long for one call splits into two that cover every case once
    rest = [c for c in cases if kernels.selected(c, "!tiled,split-k")]
    assert rest and len(rest) + sum(kernels.selected(c, "tiled,split-k") for c in cases) == len(cases)
    # a selection that matches nothing is a one-line error, before any compiler work, and writes nothing
    assert kernels.main(["build", str(tmp_path / "b"), "--only", "=no_such_kernel"]) == 2
    assert "selects no case" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert kernels.main(["build", str(tmp_path / "b"), "--only", "mma decode", "--m", "9"]) == 2  # no M = 9 there
    assert "--m 9 selects no case" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_run_selecting_no_case_is_a_one_line_error(kernels, tmp_path, capsys):
    """``run --only/--m`` that selects nothing stops before touching the GPU, with exit status 2."""
    (tmp_path / "kernels").mkdir()
    case = {"tag": "main", "kernel": "bsr_decode_n64_k256_m1_r1", "m": 1}
    (tmp_path / "kernels" / "plan.json").write_text(json.dumps({"cases": [case], "kernels": {}}))
    assert kernels.main(["run", str(tmp_path), "--only", "no such tag"]) == 2
    assert kernels.main(["run", str(tmp_path), "--m", "512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such tag" in err[0] and "--m 512" in err[1]


def test_report_of_a_partial_run_shows_packed_speedups_and_no_empty_tables(kernels):
    """A run of the packed tags alone (``--only``): the packed-versus-separate table, no nan-filled main tables."""
    base = {"tag": "packed plan", "family": "bsr_decode", "kind": "decode", "n": 4096, "k": 4096, "m": 1,
            "rows": 1, "sparsity": 0.5, "alloc": "row", "cfg": ""}
    sep = dict(base, kernel="bsr_decode_n4096_k4096_m1_r1", time_us=6.6, vs_fp16=2.5)
    packed = dict(base, kernel=sep["kernel"] + "_pm", time_us=6.0, vs_fp16=2.75)
    text = kernels.summary({"device": "GPU", "copy_gbs": 3000.0, "results": [sep, packed]})
    assert "| bsr_decode | 1 | row | 1.100 | 1.100-1.100 | 0.36-0.36 |" in text
    assert "nan" not in text and "Speed versus block height" not in text


def test_report_puts_early_trigger_mma_launches_with_pdl(kernels):
    """Tag "mma plan": a tensor-core key ending in ``ge`` (PDL, early trigger) sits on the PDL line beside the row
    kernel's PDL launch, balanced and unequal rows."""
    base = {"tag": "mma plan", "kind": "decode", "n": 4096, "k": 4096, "m": 2, "rows": 1, "sparsity": 0.5}
    rows = [dict(base, family=f, kernel=f, cfg=c, alloc=a, time_us=t, vs_fp16=16.6 / t)
            for f, c, times in (("bsr_decode", "w16u4l2hs256fd92gtea3", (4.6, 6.0)),
                                ("bsr_decode_mma", "mm_w16l1a3bge", (4.1, 4.1)))
            for a, t in zip(("row", "layer"), times)]
    text = kernels.summary({"device": "GPU", "copy_gbs": 3000.0, "results": rows})
    assert "| 4096 x 4096 | 2 | PDL | 4.6 / 6.0 | 4.1 / 4.1 | mm_w16l1a3bge | 1.12x / 1.46x |" in text
    # the same with the weight loads' cache hint (key suffix c + letters) on both kernels
    hinted = [dict(r, cfg=r["cfg"] + "cn") for r in rows]
    text = kernels.summary({"device": "GPU", "copy_gbs": 3000.0, "results": hinted})
    assert "| 4096 x 4096 | 2 | PDL | 4.6 / 6.0 | 4.1 / 4.1 | mm_w16l1a3bgecn | 1.12x / 1.46x |" in text
    assert "| plain |" not in text


def test_current_tag_times_what_gqsa_compile_builds(kernels):
    """Tag "current" (docs/perf.md's headline) at M = 1: each case's launch is the one tvm_schedules.bsr_matmul
    gives gqsa-compile for that build (plain or PDL; unequal rows on the stream kernel where it pays)."""
    import tvm

    import tvm_schedules
    from tvm_schedules import bsr_decode_stream
    from tvm_schedules.common import BSRShape

    cases = [c for c in kernels.plan(archs=("sm_90a",))[1] if c["tag"] == "current"]
    assert {(c["n"], c["k"]) for c in cases} == set(kernels.SHAPES)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"})
    for n, k in [(4096, 4096), (12288, 4096), (4096, 14336)]:
        for pdl in (False, True):
            s = BSRShape(n, k, 4, 16, 1, interleaved=True, packed=True)
            for alloc in ("row", "layer"):
                streamed = alloc == "layer" and bsr_decode_stream.pays_on_shape(s, pdl)
                built = BSRShape(n, k, 4, 16, 1, interleaved=True, packed=True,
                                 stream=bsr_decode_stream.CTAS if streamed else 0)
                want = str(tvm_schedules.bsr_matmul(built, 1, target, pdl=pdl).attrs["gqsa.config"])
                got = [c for c in cases if kernels._pdl_launch(c) == pdl
                       and (c["n"], c["k"], c["m"], c["rows"], c["alloc"], c["sparsity"]) == (n, k, 1, 1, alloc, 0.5)]
                assert [c["cfg"] for c in got] == [want], (n, k, pdl, alloc)
                assert got[0]["family"] == ("bsr_decode_stream" if streamed else "bsr_decode")


def test_report_headline_tables_from_the_current_tag(kernels):
    """A run of tag "current": the headline tables replace the first day's, every cell filled."""
    cases = [c for c in kernels.plan(archs=("sm_90a",))[1] if c["tag"] == "current"]
    results = []
    for i, c in enumerate(cases):
        t = 5.0 + i % 7 + (1.0 if c["alloc"] == "layer" else 0.0)
        r = dict(c, time_us=t, gbs=1500.0, pct_copy=50.0, vs_fp16=20.0 / t, fp16_us=20.0, tflops=1.0)
        if c["kind"] == "decode":
            r.update(vs_int4=1.5, copy_same_us=6.0)
        results.append(r)
    text = kernels.summary({"device": "GPU", "copy_gbs": 3000.0, "results": results})
    assert "per row (row-balanced)" not in text  # the first day's tables (tag "main") give way
    for want in ("| 4096 x 4096 | 1 | row |", "| 4096 x 4096 | 8 | tensor |", "| 28672 x 4096 | 2 | row |",
                 "| 4096 x 14336 | 4096 | 20 |", "| 16 |"):
        assert want in text, want
    assert "nan" not in text and "| - |" not in text
    assert "| 4096 x 4096 | 1 | tensor |" not in text  # the tensor-core GEMV is timed at M = 2-8 only
    # a later run of another launch for the same line (a launch changed between runs) replaces the earlier one
    first = next(r for r in results if r["family"] == "bsr_decode" and (r["n"], r["k"], r["m"], r["alloc"]) == (
        4096, 4096, 1, "row") and r["sparsity"] == 0.5 and kernels._pdl_launch(r))
    later = dict(first, kernel=first["kernel"] + "_later", time_us=3.3)
    text = kernels.summary({"device": "GPU", "copy_gbs": 3000.0, "results": kernels.merge([results, [later]])})
    assert "| 4096 x 4096 | 1 | row | " in text and " | 3.3 | " in text


def test_layer_chains_carry_their_members_and_report_per_layer(kernels):
    """Tag "layer": each chain case names the four GEMVs of a LLaMA layer at M = 1, each the launch tag "current"
    times alone, every member's kernel is built; the report gives a line per layer, rows and launch."""
    specs, cases = kernels.plan(archs=("sm_90a",))
    chains = [c for c in cases if c["tag"] == "layer"]
    assert len(chains) == 2 * 2 * len(kernels.LAYERS) and all(c["kind"] == "chain" for c in chains)
    current = {(c["n"], c["k"], c["alloc"], kernels._pdl_launch(c)): c["kernel"] for c in cases
               if c["tag"] == "current" and c["m"] == 1 and c["rows"] == 1 and c["sparsity"] == 0.5}
    for c in chains:
        assert [(q["n"], q["k"]) for q in c["members"]] == kernels.LAYERS[c["cfg"]]
        for q in c["members"]:
            assert q["kernel"] in specs
            if (q["n"], q["k"]) in kernels.SHAPES:  # the LLaMA matrices: the headline's launch
                assert current[q["n"], q["k"], c["alloc"], c["kernel"].endswith("_pdl")] == q["kernel"]
    assert not any(c["tag"] == "layer" and c["kind"] != "chain" for c in cases)  # members are not cases of their own
    results = [{key: v for key, v in c.items() if key != "members"} | {
        "time_us": 40.0 if c["kernel"].endswith("_pdl") else 50.0, "fp16_us": 180.0, "vs_fp16": 180.0 / (
            40.0 if c["kernel"].endswith("_pdl") else 50.0), "gbs": 2000.0, "pct_copy": 66.0} for c in chains]
    text = kernels.summary({"device": "GPU", "copy_gbs": 3000.0, "results": results})
    assert "| LLaMA-2-7B | balanced | 50.0 | 40.0 | 180.0 | 3.60 / 4.50 | 2000 (66%) |" in text
    assert "| LLaMA-3-8B | unequal |" in text
    kernels.print_table({"device": "GPU", "copy_gbs": 3000.0, "results": [dict(r, tflops=1.0) for r in results]})
