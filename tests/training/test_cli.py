"""gqsa-compress / gqsa-eval end to end on a tiny LLaMA that shares SmolLM2's tokenizer (real text, seconds)."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import TINY


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    from training import assets

    src = assets.default_model_dir()
    d = tmp_path_factory.mktemp("tinytok")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**TINY, "vocab_size": 49152})).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, d / f)
    return d


def _run(*args):
    r = subprocess.run([sys.executable, "-c", "import sys; from training.cli import compress_main, eval_main; "
                        f"sys.exit({args[0]}({list(args[1:])!r}))"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_compress_stages_then_eval(tiny_with_tokenizer, tmp_path):
    out = tmp_path / "ck"
    _run("compress_main", str(tiny_with_tokenizer), "-o", str(out), "--stages", "bqpo", "--calib-windows", "4",
         "--calib-length", "32", "--bqpo-epochs", "1")
    meta = json.loads((out / "gqsa.json").read_text())
    assert meta["stages"] == ["prune", "bqpo"] and meta["method"] == "gqsa" and meta["sparsity"] == 0.5
    assert [len(b["bqpo_mse"]) for b in meta["blocks"]] == [2, 2]  # (before, after) per block
    assert not (tmp_path / ".ck.work").exists()
    text = _run("eval_main", str(out), "--window", "64", "--max-windows", "2")
    assert "perplexity" in text and "over 126 scored tokens" in text


def test_fp16_baseline_writes_an_hf_folder_that_evaluates(tiny_with_tokenizer, tmp_path):
    out = tmp_path / "24"
    _run("compress_main", str(tiny_with_tokenizer), "-o", str(out), "--method", "sparsegpt-2:4",
         "--calib-windows", "2", "--calib-length", "32")
    assert (out / "gqsa_baseline.json").is_file() and not (out / "gqsa.json").exists()
    LlamaForCausalLM.from_pretrained(out)  # a real HF folder
    assert "scored tokens" in _run("eval_main", str(out), "--window", "64", "--max-windows", "1")


def test_user_mistakes_are_one_line_errors_and_leave_nothing(tiny_with_tokenizer, tmp_path):
    out = tmp_path / "bad"
    for args in (["--stages", "e2e", "--method", "wanda-2:4"], ["--rows", "3"], ["--group", "12"],
                 ["--sparsity", "1.5"]):
        r = subprocess.run([sys.executable, "-c", "import sys; from training.cli import compress_main; "
                            f"sys.exit(compress_main({[str(tiny_with_tokenizer), '-o', str(out), *args]!r}))"],
                           capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr[-500:])
        assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr, r.stderr
        assert not out.exists() and not list(tmp_path.glob(".bad*")), args
