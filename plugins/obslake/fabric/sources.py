"""Build a trace source from a connector's ``source:`` block."""

from __future__ import annotations

from typing import TYPE_CHECKING

from obslake.config import TraceSourceConfig
from obslake.fabric.model import TraceSource

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog


def make_source(cfg: TraceSourceConfig, catalog: "Catalog") -> TraceSource:
    """``lake`` → :class:`~obslake.fabric.lake_source.LakeTraceSource`; ``phoenix`` → PhoenixSource.

    A Phoenix ``conn_id`` is resolved through Airflow (the connection's URI), so the database
    password stays in Airflow's secrets.
    """
    if cfg.type == "lake":
        from obslake.fabric.lake_source import LakeTraceSource

        return LakeTraceSource(catalog, cfg.space)
    from obslake.fabric.phoenix import PhoenixSource

    uri = cfg.uri
    if uri is None:
        from airflow.sdk import BaseHook

        uri = BaseHook.get_connection(cfg.conn_id).get_uri()
    return PhoenixSource(uri)
