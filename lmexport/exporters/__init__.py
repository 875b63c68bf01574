"""One package per format: ``onnx/`` and ``gguf/``. Each exports a checkpoint
(``export.py`` / ``write.py``), validates what it wrote, and holds everything else
about that format; the engines that run a format live in ``lmexport.runtime``."""
