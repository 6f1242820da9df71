"""`python -m ingress.reindex` (re-caption and re-embed), the command the README documents; the tool
itself is ingress.tools.reindex."""

from ingress.tools.config import run_command
from ingress.tools.reindex import main

if __name__ == "__main__":
    run_command(main)
