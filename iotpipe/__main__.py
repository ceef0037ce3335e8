"""`python -m iotpipe` runs the CLI."""

from iotpipe.cli import main

main()
