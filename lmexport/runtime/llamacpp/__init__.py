"""llama.cpp for the liquidmetal GGUF: ``build`` (patch + pip install llama-cpp-python),
``engine`` (run a GGUF; torch-free), ``quantize`` (llama.cpp's own quantizer). See docs/llamacpp.md.

Nothing is imported here, so ``build`` works before llama_cpp is installed."""
