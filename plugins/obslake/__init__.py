"""obslake: exactly-once imports of model-inference files into Apache Iceberg, and Data Fabric exports.

The package is plain Python; the Airflow wrappers live in ``obslake.sensors``, ``obslake.operators``
and ``obslake.triggers`` and are thin.
"""

__version__ = "0.1.0"
