"""`python -m ingress.tools.bulk`."""

from ingress.tools.bulk.cli import entry

entry()
