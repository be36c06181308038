"""Run one import in a separate process (crash tests and multi-writer tests).

Usage: python import_worker.py '<json>' where json = {"job": {...}, "endpoint": "http://127.0.0.1:port"
or null, "infos": [ObjectInfo dicts], "batch": true to import them with ``import_files`` in one batch}.
Lake settings come from OBSLAKE_* variables. Prints one JSON result per file on stdout.
"""

import json
import sys

import fault_points

from obslake.config import ImportJob
from obslake.lake.catalog import LakeSettings, load_catalog
from obslake.lake.importer import import_file, import_files
from obslake.lake.ledger import Ledger
from obslake.storage import open_store
from obslake.storage.base import ObjectInfo
from obslake.storage.s3 import make_s3_client


def main() -> None:
    fault_points.install_from_env()
    args = json.loads(sys.argv[1])
    job = ImportJob.model_validate(args["job"])
    client = make_s3_client(endpoint_url=args["endpoint"]) if args.get("endpoint") else None
    store, _ = open_store(job.source, s3_client=client)
    settings = LakeSettings.from_env()
    catalog, ledger = load_catalog(settings), Ledger(settings.state_uri)
    if args.get("batch"):
        for result in import_files(job, store, [ObjectInfo.from_dict(i) for i in args["infos"]], catalog=catalog,
                                   ledger=ledger):
            print(json.dumps(result.to_dict()), flush=True)
        return
    for info in args["infos"]:
        result = import_file(job, store, ObjectInfo.from_dict(info), catalog=catalog, ledger=ledger,
                             chunk_rows=args.get("chunk_rows", 1_000_000))
        print(json.dumps(result.to_dict()), flush=True)


if __name__ == "__main__":
    main()
