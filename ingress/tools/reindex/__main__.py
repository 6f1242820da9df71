"""`python -m ingress.tools.reindex`."""

from ingress.tools.config import run_command
from ingress.tools.reindex.cli import main

run_command(main)
