"""Batch jobs over :class:`spec.Engine`: resumable JSONL jobs (:mod:`spec.jobs.batch`, public as
``spec.batch``) and Ray Data (:mod:`spec.jobs.ray`, public as ``spec.ray``)."""
