"""`genssl compare`: grids of methods x label counts x seeds, their runner, derived sample entries, and the
report (tables, plots, TensorBoard HParams)."""
