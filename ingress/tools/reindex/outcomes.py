"""How a reindex run ends: its exit status and what it says about it (usage errors:
ingress.tools.config.usage_error)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ingress.stores.base import StoreError
from ingress.tools.config import EXIT_STORE_FAILED, print_keys
from ingress.tools.reindex.state import Checkpoint

logger = logging.getLogger("ingress.tools.reindex")

EXIT_DONE = 0
EXIT_IMAGES_FAILED = 1
# EXIT_USAGE (2) and EXIT_STORE_FAILED (3) are ingress.tools.config's, shared with
# ingress.tools.maintenance.


def store_failed(error: StoreError, state_path: Path) -> int:
    logger.debug("store failure", exc_info=True)
    print(
        f"error: a store failed: {error}\nprogress is saved in {state_path}; "
        "run the same command again to continue",
        file=sys.stderr,
    )
    return EXIT_STORE_FAILED


def failures(state: Checkpoint) -> int:
    if not state.failed:
        return EXIT_DONE
    shown = [f"{image_id}: {why}" for image_id, why in state.failures.items()]
    print_keys("failed", shown)
    if state.failed > len(shown):
        print(f"  ({state.failed - len(shown)} more not kept)")
    print("run the command again to retry them; they are left as they were")
    return EXIT_IMAGES_FAILED
