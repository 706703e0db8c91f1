"""The whole flow from a trained checkpoint to a bit-exact run of the accelerator RTL (``python -m flow``).

The top of the import graph: it uses the training side (``sw``), the compiler (``firmware_gen``), the
hardware (``hw``) and the simulation (``sim``); nothing imports it."""
