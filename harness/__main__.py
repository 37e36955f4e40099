"""`python -m harness ...` runs the Hydra app (for machines where console scripts are not installed)."""

from harness.run import main

if __name__ == "__main__":
    main()
