"""Preflight: one short job, launched exactly as training is, that tells what a new cluster will do to a run."""
