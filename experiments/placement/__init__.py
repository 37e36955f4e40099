"""Placement studies: BPRR Table III and scattered runs, optimality, the real pipeline chain, sweep reports."""
