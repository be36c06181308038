"""Build a trace source from a connector's ``source:`` block."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from obslake.config import TraceSourceConfig
from obslake.exceptions import ConfigError
from obslake.fabric.model import TraceSource

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog


def make_source(
    cfg: TraceSourceConfig, catalog: Catalog, connection_uri: Callable[[str], str] | None = None
) -> TraceSource:
    """``lake`` → :class:`~obslake.fabric.lake_source.LakeTraceSource`; ``phoenix`` → PhoenixSource.

    A Phoenix ``conn_id`` is resolved by ``connection_uri`` (the Airflow wrappers pass
    :func:`obslake.hooks.connection_uri`, so the database password stays in Airflow's secrets).
    """
    if cfg.type == "lake":
        from obslake.fabric.lake_source import LakeTraceSource

        return LakeTraceSource(catalog, cfg.space)
    from obslake.fabric.phoenix import PhoenixSource

    uri = cfg.uri
    if not uri:  # as TraceSourceConfig's validator reads it: an empty uri is no uri
        if connection_uri is None:
            raise ConfigError(
                f"the phoenix source uses conn_id {cfg.conn_id!r}, an Airflow connection: run the sync "
                "in Airflow, or give the database as `uri:`"
            )
        if cfg.conn_id is None:  # TraceSourceConfig's validator requires uri or conn_id
            raise ConfigError("a phoenix source needs `uri` (e.g. sqlite:////data/phoenix.db) or `conn_id`")
        uri = connection_uri(cfg.conn_id)
    return PhoenixSource(uri)
