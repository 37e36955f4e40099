"""Where trials run: ``local`` subprocesses (the default); later, Ray actors."""
