"""What each file format is, stated once and torch-free: the constants, keys and type rules that
the exporter that writes a format and the engine that runs it both read (gguf-py's shape:
constants below the writer and the tools). ``gguf.py``: lmexport's GGUF files. The ONNX folder's
contract is ``lmexport/manifest.py`` (with ``manifest_schema.py``)."""
