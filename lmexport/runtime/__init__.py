"""The laptop runtime: run an exported ONNX folder with ONNX Runtime.

Imports only onnxruntime, numpy, tokenizers (and jinja2 for chat templates);
never torch or transformers. ``pip install lmexport`` is enough for it.
"""
from lmexport.runtime.chat import ChatSession
from lmexport.runtime.generator import Generation, Generator, Piece, Stats
from lmexport.runtime.sampling import SamplingParams
from lmexport.runtime.ort import Session

__all__ = ["ChatSession", "Generation", "Generator", "Piece", "SamplingParams", "Session", "Stats"]
