"""Golden model (the arithmetic contract) and RTL verification harnesses."""
