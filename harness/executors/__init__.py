"""Where trials and long-lived workers run: ``local`` subprocesses (the default) or ``ray`` tasks and actors."""
