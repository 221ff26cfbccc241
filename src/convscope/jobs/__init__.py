"""Jobs that run explain methods over whole data sets, on a laptop or a Ray cluster.

:func:`run_batch` writes a chunked, resumable Zarr store (:mod:`convscope.jobs.store`);
:func:`open_store` reads it.
"""

from .batch import BatchJob, JobOptions, run_batch
from .store import BatchStore, open_store

__all__ = ["BatchJob", "BatchStore", "JobOptions", "open_store", "run_batch"]
