"""`python -m iotpipe` runs the CLI."""

from iotpipe.cli import main

if __name__ == "__main__":  # not when a worker process of an import re-imports it
    main()
