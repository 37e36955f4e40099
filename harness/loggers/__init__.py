"""Result sinks: ``none`` (default) and ``wandb``; each reads a finished run directory."""
