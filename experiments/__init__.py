"""The studies: each experiment's run function, metrics, figures and report (the top layer)."""
