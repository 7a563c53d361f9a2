"""Pieces of the training engine: trainers (one protocol for plain and MetaLR steps), lr schedules, losses,
epoch checkpoints and seeded batch iteration. ``benchmarks.engine.execute`` wires them together."""
