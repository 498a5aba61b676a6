"""The tests' one source of fresh seeds (the ``seed`` fixture in tests/conftest.py uses it).

Every run draws a fresh session seed; ``FLASHREF_SEED=<n>`` replays a run. It is put in the
environment so that collection-time code and subprocesses (and xdist workers, which inherit
the controller's environment) see the same value.
"""

import hashlib
import os
import secrets

SEED_ENV = "FLASHREF_SEED"
os.environ.setdefault(SEED_ENV, str(secrets.randbits(31)))


def session_seed() -> int:
    """This run's seed: FLASHREF_SEED if set, else the fresh one drawn at start-up."""
    return int(os.environ[SEED_ENV])


def derived_seed(label: str) -> int:
    """A seed for ``label`` (a test id), fixed by the session seed: different per label, the
    same on replay."""
    digest = hashlib.sha256(f"{session_seed()}:{label}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
