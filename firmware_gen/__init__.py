"""Turns trained, compressed layers into the accelerator's memory images and command streams."""
