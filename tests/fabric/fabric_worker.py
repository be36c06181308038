"""Run one connector sync in a separate process (kill -9 tests). argv[1] = JSON {"connector": {...}, "project": ...}."""

import json
import sys

import fault_points

from obslake.config import Connector
from obslake.fabric.export import ProjectExporter
from obslake.lake.catalog import load_catalog
from obslake.storage.credentials import StorageCredentials
from obslake.fabric.lake_source import LakeTraceSource

fault_points.install_from_env()
args = json.loads(sys.argv[1])
conn = Connector.model_validate(args["connector"])
catalog = load_catalog(storage=StorageCredentials.from_env(conn.storage))
result = ProjectExporter(conn, args["project"], catalog).sync(LakeTraceSource(catalog, "traces"))
print(json.dumps(result.to_dict()))
