"""The laptop runtime: run an exported ONNX folder with ONNX Runtime.

Imports only onnxruntime, numpy, tokenizers (and jinja2 for chat templates);
never torch or transformers. ``pip install lmexport`` is enough for it.
"""
from .chat import ChatSession
from .generator import Generation, Generator, Piece, Stats
from .sampling import SamplingParams
from .session import Session

__all__ = ["ChatSession", "Generation", "Generator", "Piece", "SamplingParams", "Session", "Stats"]
