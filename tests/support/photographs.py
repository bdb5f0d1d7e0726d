"""Real photographs that ship in installed packages (scikit-image's `skimage.data`, matplotlib's
sample data), for tests and benchmarks that need a real answer from a real model."""

from __future__ import annotations

from PIL import Image


def photographs() -> dict[str, Image.Image]:
    """A cat (451 x 300), a cup of coffee (600 x 400), an astronaut (512 x 512) and Grace Hopper
    (512 x 600), as RGB images."""
    import matplotlib.cbook
    import skimage.data

    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return {
        "chelsea": Image.fromarray(skimage.data.chelsea()),
        "coffee": Image.fromarray(skimage.data.coffee()),
        "astronaut": Image.fromarray(skimage.data.astronaut()),
        "grace_hopper": hopper,
    }
