"""Train EasyAnimate V5/V5.1 control-video diffusion models, preemption-safe, on SLURM clusters."""

__version__ = "0.1.0"
