"""Where the lake lives: the Iceberg catalog, the warehouse and the bookkeeping database.

Defaults need no configuration: a SQL catalog on SQLite at ``$OBSLAKE_HOME/catalog.db`` (default
``~/.obslake``) and a warehouse at ``$OBSLAKE_HOME/warehouse``. Production points
``OBSLAKE_CATALOG_URI`` at Postgres (``postgresql+psycopg2://…``), or sets ``OBSLAKE_CATALOG_TYPE``
to ``rest``/``glue`` with ``OBSLAKE_CATALOG_PROPERTIES`` (JSON of pyiceberg catalog properties).
The import ledger lives in ``OBSLAKE_STATE_URI`` (default: the SQL catalog's database).
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obslake.exceptions import ConfigError
from obslake.lake.iceberg import STORE_FILE_IO, load_table, memoise_transaction_metadata, retry_on_ddl_race
from obslake.storage.credentials import StorageCredentials

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog

CATALOG_NAME = "obslake"


def obslake_home(env: dict[str, str] | None = None) -> Path:
    """``$OBSLAKE_HOME`` (from ``env``, default the process environment) or ``~/.obslake``, created on first use."""
    values = os.environ if env is None else env
    home = Path(values.get("OBSLAKE_HOME") or Path.home() / ".obslake").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclasses.dataclass(frozen=True)
class LakeSettings:
    """Catalog type and properties, plus the SQLAlchemy URI of the state (ledger) database."""

    catalog_type: str
    catalog_properties: tuple[tuple[str, str], ...]
    state_uri: str

    @property
    def properties(self) -> dict[str, str]:
        """pyiceberg catalog properties as a dict."""
        return dict(self.catalog_properties)

    @property
    def warehouse(self) -> str | None:
        """The warehouse location, if the catalog names one."""
        return self.properties.get("warehouse")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> LakeSettings:
        """Read ``OBSLAKE_*`` variables (see module docstring); fill in the embedded defaults."""
        env = dict(os.environ if env is None else env)
        ctype = env.get("OBSLAKE_CATALOG_TYPE", "sql").lower()
        try:
            extra: dict[str, Any] = json.loads(env.get("OBSLAKE_CATALOG_PROPERTIES") or "{}")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"OBSLAKE_CATALOG_PROPERTIES is not valid JSON: {exc}") from exc
        if not isinstance(extra, dict):
            raise ConfigError(
                f"OBSLAKE_CATALOG_PROPERTIES must be a JSON object of pyiceberg catalog properties, e.g. "
                f'{{"uri": "postgresql+psycopg2://..."}}; got {type(extra).__name__}'
            )
        props = {k: str(v) for k, v in extra.items()}
        home = None
        if ctype == "sql":
            if "uri" not in props:
                if env.get("OBSLAKE_CATALOG_URI"):
                    props["uri"] = env["OBSLAKE_CATALOG_URI"]
                else:
                    home = obslake_home(env)
                    props["uri"] = f"sqlite:///{home / 'catalog.db'}"
            props.setdefault("init_catalog_tables", "true")
        if "warehouse" not in props:
            if env.get("OBSLAKE_WAREHOUSE"):
                props["warehouse"] = env["OBSLAKE_WAREHOUSE"]
            elif ctype == "sql":
                home = home or obslake_home(env)
                (home / "warehouse").mkdir(exist_ok=True)
                props["warehouse"] = f"file://{home / 'warehouse'}"
        props["type"] = ctype
        state_uri = env.get("OBSLAKE_STATE_URI") or (props["uri"] if ctype == "sql" else None)
        if state_uri is None:
            state_uri = f"sqlite:///{obslake_home(env) / 'state.db'}"
        return cls(ctype, tuple(sorted(props.items())), state_uri)

    @classmethod
    def from_properties(cls, properties: dict[str, Any], env: dict[str, str] | None = None) -> LakeSettings:
        """Settings from pyiceberg catalog properties (an Airflow ``iceberg`` connection's, see
        :func:`obslake.hooks.obslake.lake_settings`): ``type`` (default ``rest``, as the Iceberg provider),
        ``uri``, ``warehouse``, credentials...; obslake's own key ``obslake.state-uri`` names the ledger's
        database (default: a SQL catalog's ``uri``, else ``OBSLAKE_STATE_URI``, else ``$OBSLAKE_HOME/state.db``)."""
        env = dict(os.environ if env is None else env)
        props = {k: str(v) for k, v in properties.items() if k != STATE_URI_PROPERTY}
        props.setdefault("type", "rest")
        if props["type"] == "sql":
            if "uri" not in props:
                raise ConfigError("an Iceberg connection of type sql needs a uri (the catalog's SQLAlchemy URI)")
            props.setdefault("init_catalog_tables", "true")
        state_uri = (
            str(properties.get(STATE_URI_PROPERTY) or "")
            or (props["uri"] if props["type"] == "sql" else "")
            or env.get("OBSLAKE_STATE_URI")
            or f"sqlite:///{obslake_home(env) / 'state.db'}"
        )
        return cls(props["type"], tuple(sorted(props.items())), state_uri)


STATE_URI_PROPERTY = "obslake.state-uri"
"""The key, among an Iceberg connection's extras, of the ledger's SQLAlchemy URI."""


@lru_cache(maxsize=16)
def _load_catalog_cached(settings: LakeSettings, storage_properties: tuple[tuple[str, str], ...] | None) -> Catalog:
    from pyiceberg.catalog import load_catalog as _load

    props = settings.properties
    if storage_properties is not None:
        props = {**props, **dict(storage_properties), "py-io-impl": STORE_FILE_IO}
    return retry_on_ddl_race(lambda: _load(CATALOG_NAME, **props))


def load_catalog(settings: LakeSettings | None = None, storage: StorageCredentials | None = None) -> Catalog:
    """The pyiceberg catalog for ``settings`` (default: from the environment), cached per process.

    Args:
        settings: where the catalog and the warehouse are.
        storage: the credentials of a customer's bucket that tables of this catalog are written to (Data
            Fabric exports); their FileIO properties join the catalog's (never the table metadata).
    """
    memoise_transaction_metadata()  # before the first table load of the process (see there)
    props = tuple(sorted(storage.fileio_properties().items())) if storage is not None else None
    return _load_catalog_cached(settings or LakeSettings.from_env(), props)


def table_arrow_schema(catalog: Catalog, ident: tuple[str, str]) -> pa.Schema | None:
    """The Arrow schema of an Iceberg table as it is now, or None if the table does not exist yet.

    The dry run compares each file with it (a column type the table cannot take fails there too).
    """
    table = load_table(catalog, ident)
    return table.schema().as_arrow() if table is not None else None
