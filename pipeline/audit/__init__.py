"""The metric audit of a super-resolved volume, block by block on the run's Dask engine.

`inputs` opens and places the volumes, `grid` cuts the audited region into blocks grouped
into units (one Dask task each), `measure` scores one unit on a worker, `quality` holds the
reference-free resolution estimates, `scores` stores every block's numbers (resumable),
`document` writes the summary and the quality-map volume, and `run` puts them together.
"""
