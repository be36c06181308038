"""Airflow hooks: the only code of obslake that reads Airflow Connections (:class:`ObslakeHook`)."""

from obslake.hooks.obslake import ObslakeHook, connection_uri, credentials_for, store_for

__all__ = ["ObslakeHook", "connection_uri", "credentials_for", "store_for"]
