"""The GGUF format: keys, type rules and bounds (``format.py``), the writer
(``write.py``), the tokenizer metadata (``tokenizer.py``), the validation on write
(``validate.py``) and reading a file back into PyTorch (``reader.py``).

Importing this package imports nothing heavy.
"""
