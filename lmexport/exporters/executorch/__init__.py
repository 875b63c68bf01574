"""ExecuTorch: the Liquid-Metal decoder as a .pte for XNNPACK (phones), and the engine that runs it.

program.py   the wrapper traced by torch.export: forward(tokens, input_pos), state in mutable buffers
quant.py     8da4w linears (torchao) and int8 embedding rows
export.py    ``lmexport executorch``: trace, lower, serialize, validate, write atomically
sidecar.py   model.lmexport.json beside the .pte (torch-free)
engine.py    ExecutorchEngine: the .pte in executorch.runtime (reset, step, tokenizer)

See docs/executorch.md.
"""
