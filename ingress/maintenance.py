"""`python -m ingress.maintenance` (orphan blobs), the command the README documents; the tool
itself is ingress.tools.maintenance."""

from ingress.tools.config import run_command
from ingress.tools.maintenance import main

if __name__ == "__main__":
    run_command(main)
