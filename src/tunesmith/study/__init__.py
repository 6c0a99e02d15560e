"""The stages that run other stages: cross-validation, search, seeds, auto, federation."""

import os

# Flower's usage telemetry (flwr, study/federated.py) would reach for the network. flwr reads
# this switch once, when it is first imported, and every import of it goes through this package
# first; Ray's worker processes inherit it.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
