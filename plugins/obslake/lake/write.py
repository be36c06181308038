"""Write an Arrow table as Iceberg data files, split by identity partitions in one sort.

pyiceberg's ``_dataframe_to_data_files`` splits a table by filtering it once per distinct partition
(rows × partitions work): a Data Fabric rewrite touching 2,000 hourly partitions filtered the whole
table 2,000 times. Here the rows are sorted by the partition columns once and cut into contiguous
slices; the slices are written by pyiceberg's own ``write_file`` (its thread pool, file naming,
statistics and target file size), so the data files are the same as pyiceberg would produce.
"""

from __future__ import annotations

import itertools
import uuid
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table


def _identity_sources(table: "Table") -> list[str] | None:
    """The source column names of a spec made only of identity transforms (None otherwise)."""
    from pyiceberg.transforms import IdentityTransform

    spec, schema = table.spec(), table.schema()
    if spec.is_unpartitioned() or not all(isinstance(f.transform, IdentityTransform) for f in spec.fields):
        return None
    return [schema.find_column_name(f.source_id) for f in spec.fields]


def _run_starts(columns: list[pa.ChunkedArray]) -> np.ndarray:
    """Row indexes where any of the (sorted) ``columns`` changes value, starting with 0."""
    n = len(columns[0])
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for col in columns:
        col = col.combine_chunks()
        if pa.types.is_date32(col.type):
            col = col.cast(pa.int32())
        elif pa.types.is_temporal(col.type):
            col = col.cast(pa.int64())
        elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            col = pc.dictionary_encode(col).indices  # equal values, equal codes
        valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
        v = col.fill_null(0).to_numpy(zero_copy_only=False)
        change[1:] |= (v[1:] != v[:-1]) | (valid[1:] != valid[:-1])
    return np.flatnonzero(change)


def write_data_files(table: "Table", rows: pa.Table, write_uuid: uuid.UUID | None = None,
                     counter: "itertools.count[int] | None" = None) -> list["DataFile"]:
    """Data files (not yet committed) holding ``rows``, one or more per partition of the table's spec.

    Args:
        table: the target table (its current schema, spec and properties are used).
        rows: rows already conformed to the table's Arrow schema.
        write_uuid: names the files of one commit (pyiceberg's convention).
        counter: task ids for file names, shared across the calls of one commit.
    """
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    write_uuid, counter = write_uuid or uuid.uuid4(), counter or itertools.count(0)
    sources = _identity_sources(table)
    if rows.num_rows == 0:
        return []
    if sources is None:  # unpartitioned or non-identity transforms: pyiceberg's own split
        return list(_dataframe_to_data_files(table_metadata=table.metadata, df=rows, io=table.io,
                                             write_uuid=write_uuid, counter=counter))
    rows = rows.sort_by([(c, "ascending") for c in sources])
    starts = _run_starts([rows[c] for c in sources])
    ends = np.append(starts[1:], rows.num_rows)
    return list(_write_slices(table, [rows.slice(s, e - s) for s, e in zip(starts, ends)], sources,
                              write_uuid, counter))


def _write_slices(table: "Table", slices: list[pa.Table], sources: list[str], write_uuid: uuid.UUID,
                  counter) -> Iterable["DataFile"]:
    from pyiceberg.io.pyarrow import bin_pack_arrow_table, pyarrow_to_schema, write_file
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.table import TableProperties, WriteTask
    from pyiceberg.utils.properties import property_as_int

    meta = table.metadata
    spec, schema = meta.spec(), meta.schema()
    target_size = property_as_int(meta.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
                                  TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT)
    task_schema = pyarrow_to_schema(slices[0].schema, name_mapping=schema.name_mapping,
                                    format_version=meta.format_version)

    def tasks():
        for part in slices:
            key = PartitionKey(
                field_values=[PartitionFieldValue(field=f, value=part[src][0].as_py())
                              for f, src in zip(spec.fields, sources)],
                partition_spec=spec, schema=schema)
            for batches in bin_pack_arrow_table(part.combine_chunks(), target_size):
                yield WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=batches,
                                partition_key=key, schema=task_schema)

    yield from write_file(io=table.io, table_metadata=meta, tasks=tasks())
