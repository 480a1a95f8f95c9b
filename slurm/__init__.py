"""The SLURM job suite: one job spec rendered into an sbatch script, a per-node launcher, NCCL profiles,
attempt accounting and requeue. Node-side modules (spec, nccl, render, attempts, launch) use the standard library
only, so the host Python of any compute node can run them; the training stack lives in the container.
"""
