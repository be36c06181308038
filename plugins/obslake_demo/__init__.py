"""The obslake demo kit: the end-to-end demo and the sample-file writers.

- :mod:`obslake_demo.demo` is ``obslake demo`` / ``./run demo``: a local S3 (moto server) on
  127.0.0.1, example files uploaded to it, the import and Data Fabric DAGs run with ``dag.test()``,
  and a report of what landed.
- :mod:`obslake_demo.writers` writes tables as Parquet, CSV, Avro and Arrow IPC files; the demo,
  the tests and the benchmarks share it to make their sample files.

This package ships in the same distribution as :mod:`obslake` but is not part of the product API:
nothing in :mod:`obslake` imports it except the ``demo`` subcommand of :mod:`obslake.cli`, lazily.
The demo needs the ``local`` extra (moto), e.g. ``pip install '.[local]'``.
"""
