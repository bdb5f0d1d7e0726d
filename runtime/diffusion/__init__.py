"""Text-to-image diffusion in numpy: the schedulers of the denoising loop."""
