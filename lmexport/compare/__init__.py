"""The one comparison core (numpy only, torch-free): how far an artifact is from a reference.

``metrics.py`` (log-softmax, KL, NLL, the logit metrics), ``tolerances.py`` (the presets and the
bound check) and ``loop.py`` (the prefill, reference-greedy decode and compare loop over two engines,
and the per-layer localisation). The exporters' validation, ``lmexport parity``, ``bench``'s
quality column and ``perplexity`` all call it; none of them spells a metric again.
"""
