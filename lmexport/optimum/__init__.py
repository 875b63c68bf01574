"""An exported ONNX folder behind optimum-onnx, so transformers' ``generate()`` runs it.

    from lmexport.optimum import ORTModelForLiquidMetal, load_tokenizer

    model = ORTModelForLiquidMetal.from_pretrained("out/onnx")
    tok = load_tokenizer("out/onnx")
    ids = model.generate(**tok(["def read(path):", "import"], return_tensors="pt", padding=True),
                         max_new_tokens=32, do_sample=False)

optimum-onnx's ``ORTModelForCausalLM`` carries only ``.key``/``.value`` caches; the
subclass here carries every state input that the folder's ``lmexport.json`` declares
(keys and values, convolution windows, context sums) as one ``OnnxState``, creates it
as the manifest says (zeros) and reorders it for beam search. Needs the
``lmexport[optimum]`` extra (optimum-onnx 0.1.0 with transformers < 4.58, torch).
"""
from __future__ import annotations

try:
    import optimum.onnxruntime  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:  # an extra that is not installed: say which one
    raise ImportError(f"lmexport.optimum needs optimum-onnx, transformers<4.58 and torch ({exc}); "
                      "install them with: pip install 'lmexport[optimum]' "
                      "(or run scripts/setup_optimum.sh for a ready environment)") from exc

from lmexport.optimum.config import LiquidMetalHFConfig, config_from_manifest
from lmexport.optimum.modeling import ORTModelForLiquidMetal
from lmexport.optimum.state import OnnxState
from lmexport.optimum.tokenizer import load_tokenizer

__all__ = ["LiquidMetalHFConfig", "ORTModelForLiquidMetal", "OnnxState", "config_from_manifest", "load_tokenizer"]
