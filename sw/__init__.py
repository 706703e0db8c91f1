"""Training side: pattern pruning and quantization of transformer weights."""
