"""lmexport: export the Liquid-Metal TinyLlama decoder to ONNX and GGUF.

The runtime (``lmexport.runtime``) needs only onnxruntime, numpy and tokenizers;
everything that touches PyTorch lives in ``lmexport.modeling``, the exporters,
the checkpoint reader and the parity check (``pip install lmexport[export]``).
"""
__version__ = "0.1.0"
