"""draft-lightning: reward fine-tuning of Stable Diffusion by backpropagating through sampling.

Heavy imports (lightning, diffusers, open_clip) stay inside the submodules so that
`import draft_lightning` is cheap.
"""

__version__ = "0.1.0"
