"""The ONNX format: export (``export.py``), the traced graph and its IO
(``graph.py``), fused-op swaps (``fused.py``), quantisation (``quant.py``) and
the validation against PyTorch (``validate.py``). The folder's manifest,
``lmexport.json``, is ``lmexport.manifest`` (torch-free: every engine reads it).

Importing this package imports nothing heavy; the modules import torch.
"""
