"""Amaranth HDL of the pattern-sparse accelerator."""
