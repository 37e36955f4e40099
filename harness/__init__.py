"""coldstart harness: the runner and everything the loaders, schedulers and placement parts share."""

__version__ = "0.1.0"
