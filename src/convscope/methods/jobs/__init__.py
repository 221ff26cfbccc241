"""Jobs that run explain methods over whole data sets, on a laptop or a Ray cluster.

:func:`run_batch` writes a chunked, resumable Zarr store (:mod:`convscope.methods.jobs.store`);
:func:`open_store` reads it.
"""

from convscope.methods.jobs.batch import BatchJob, JobOptions, run_batch
from convscope.methods.jobs.store import BatchStore, open_store

__all__ = ["BatchJob", "BatchStore", "JobOptions", "open_store", "run_batch"]
