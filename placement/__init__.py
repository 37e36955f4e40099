"""coldstart placement: see base.py for the contract; one file per plug-in."""
