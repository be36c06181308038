"""Data Fabric: LLM trace projects exported to a customer's bucket as Iceberg (and Delta) tables."""
