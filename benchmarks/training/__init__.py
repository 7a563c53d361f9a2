"""Pieces of the training engine: the plain trainer (the protocol every trainer satisfies is petl.trainer's),
lr schedules, losses, the loop's state and its epoch checkpoints, and seeded batch iteration.
``benchmarks.engine.execute`` wires them together."""
