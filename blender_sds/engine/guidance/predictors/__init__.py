"""Noise predictors over real diffusion models (Stable Diffusion, pixel-space), their loading and CUDA graphs."""
