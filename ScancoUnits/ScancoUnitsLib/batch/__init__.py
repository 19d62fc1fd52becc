"""Many files: discovery, worker processes, skip-existing, summaries, Dask."""
