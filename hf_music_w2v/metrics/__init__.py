"""`evaluate` metric modules shipped with the package, so evaluation works offline (no Hub fetch).

Load them with `hf_music_w2v.evaluation.load_metric("top_k_accuracy")` or `evaluate.load(<path of the .py file>)`.
"""
