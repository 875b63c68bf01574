"""llama.cpp for the liquidmetal GGUF: ``build`` (patch + pip install llama-cpp-python), ``install``
(is the patched build here?), ``engine`` (the llama.cpp engine: run a GGUF; torch-free), with its
``tokenizer``, ``native_log`` and ``completion`` (llama.cpp's own sampler), and ``quantize``
(llama.cpp's own quantizer). See docs/llamacpp.md.

Nothing is imported here, so ``build`` works before llama_cpp is installed."""
