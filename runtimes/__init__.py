"""Runtimes: how a cold start gets a Python process ready to load (a fresh interpreter, a forking zygote, a pool)."""
