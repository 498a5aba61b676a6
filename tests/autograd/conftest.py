"""The autograd tests take their fresh seed from the ``seed`` / ``rng`` fixtures of
tests/conftest.py (new per run, printed, replayable with FLASHREF_SEED=<n>)."""
