"""The petl benchmark suite: datasets, training engine, sweep runner, measurement and reports."""
