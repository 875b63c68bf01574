"""The torch-free runtime: the generation loop, chat, sampling and tokenizer over any engine
(``lmexport.engine``), and the engines that need no torch: ONNX Runtime (``ort.py``) and the
patched llama.cpp (``llamacpp/``).

Imports only onnxruntime, numpy, tokenizers (and jinja2 for chat templates; llama_cpp for a
GGUF); never torch or transformers. ``pip install lmexport`` is enough for it.
"""
from lmexport.engine import Response, Stats, open_artifact
from lmexport.runtime.chat import ChatSession
from lmexport.runtime.generator import Generation, Generator, Piece
from lmexport.runtime.sampling import SamplingParams
from lmexport.runtime.ort import OnnxEngine, Session

__all__ = ["ChatSession", "Generation", "Generator", "OnnxEngine", "Piece", "Response", "SamplingParams", "Session",
           "Stats", "open_artifact"]
