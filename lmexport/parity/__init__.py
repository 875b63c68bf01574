"""Parity of an artifact with the PyTorch reference: the run (``run.py``), its
backends, the logit metrics and the tolerance presets (``metrics.py``,
``tolerances.py``; both numpy-only, shared with the exporters' validators)."""
