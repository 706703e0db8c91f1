"""The arithmetic contract: integer golden model, pattern geometry, quantization rules, artifact reader.

The bottom of the import graph: imports torch, numpy and safetensors only; ``sw/``, ``hw/``,
``firmware_gen/``, ``sim/`` and ``bench/`` import it, never the other way round.
"""
