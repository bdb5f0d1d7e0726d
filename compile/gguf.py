"""GGUF model directories: converted once to an ordinary transformers directory, then compiled.

transformers reads a GGUF file (`gguf_file=`) and dequantizes its weights to fp32; kiln saves
that model and its tokenizer (chat template included) and exports it like any other. The
compiled model therefore computes with the GGUF's dequantized weights, exactly as PyTorch does
when it loads the same file. Needs the `gguf` package (extra `gguf`).
"""

from __future__ import annotations

from pathlib import Path

from compile.errors import CompileFailed


def gguf_file(model_dir: Path) -> Path | None:
    """The one GGUF file of a directory that has no transformers config, if that is what it is."""
    if (model_dir / "config.json").is_file():
        return None
    files = sorted(model_dir.glob("*.gguf"))
    if len(files) > 1:
        raise CompileFailed(f"{model_dir} holds several GGUF files ({', '.join(f.name for f in files)}); keep one")
    return files[0] if files else None


def convert(model_dir: Path, file: Path, out: Path) -> Path:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise CompileFailed("compiling a GGUF model needs the `gguf` package: pip install 'kiln[gguf]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=file.name)  # type: ignore[no-untyped-call]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(f"---\npipeline_tag: text-generation\n---\nConverted from {file.name}\n")
    return out
