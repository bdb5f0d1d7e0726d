"""Builders of test models that are too big or too specialised for `kiln.tiny_models`."""
