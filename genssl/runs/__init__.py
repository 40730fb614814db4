"""The run folder and its checkpoints (genssl.runs.run_dir.RunDir): one owner for every file a run writes."""
