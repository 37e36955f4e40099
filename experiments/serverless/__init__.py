"""Serverless studies: the simulated scheduler grid, the real controller replay, sim-vs-real validation."""
