"""Writing top-K lists: chunk by chunk, resumable, and never half-written under the final name.

Each chunk of users becomes one part file (Parquet, or header-less CSV) in a hidden folder beside
the output, ``.NAME.partial/``, committed by an atomic rename and recorded in ``progress.json``
together with a fingerprint of the inputs. When every chunk is there, the parts are streamed into
the final file under a temporary name (one Parquet row group per chunk, or the CSV header plus
the parts' bytes) and renamed onto ``NAME``. An interrupted run leaves only the hidden folder;
``resume=True`` keeps the chunks it committed (when the fingerprint matches) so the final file is
byte-for-byte what an uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.data.io import atomic_path, write_json, writing
from recsys.errors import RecsysError

COLUMNS = ("user", "item", "rank", "score", "cold")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
PROGRESS_FILE = "progress.json"
# What the parts folder holds: progress, parts, and atomic_path's temporaries of either.
_PARTS_ENTRY = re.compile(r"^\.?(progress\.json|part-\d{6}\.(csv|parquet))(\..+\.tmp)?$")


def output_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise RecsysError(f"--out {path}: unknown format '{suffix or '(none)'}'; "
                          "use a .csv or .parquet file name")
    return FORMATS[suffix]


def _id_array(ids: np.ndarray) -> pa.Array:
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return pa.array(ids.astype(np.int64), type=pa.int64())
    return pa.array(ids.astype(str).tolist(), type=pa.string())


def lists_schema(user_ids: np.ndarray, item_ids: np.ndarray) -> pa.Schema:
    """The output schema: id columns typed like the vocabularies (int64 or string)."""
    def kind(ids: np.ndarray) -> pa.DataType:
        return pa.int64() if np.asarray(ids).dtype.kind in "iu" else pa.string()
    return pa.schema([("user", kind(user_ids)), ("item", kind(item_ids)), ("rank", pa.int32()),
                      ("score", pa.float32()), ("cold", pa.bool_())])


def lists_table(user_ids: np.ndarray, items: np.ndarray, scores: np.ndarray, cold: np.ndarray,
                item_ids: np.ndarray) -> pa.Table:
    """Long table (user, item, rank, score, cold) from a chunk's ``(b, k)`` top-K arrays.

    ``user_ids``: external ids of the chunk's users; ``items``: internal item ids, -1 where the
    list is shorter (dropped); ``item_ids``: the item vocabulary (internal -> external).
    """
    b, k = items.shape
    keep = items >= 0
    per_user = keep.sum(axis=1)
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), (b, k))
    return pa.table({
        "user": _id_array(np.repeat(np.asarray(user_ids), per_user)),
        "item": _id_array(np.asarray(item_ids)[items[keep]]),
        "rank": pa.array(ranks[keep], type=pa.int32()),
        "score": pa.array(scores[keep].astype(np.float32), type=pa.float32()),
        "cold": pa.array(np.repeat(np.asarray(cold, dtype=bool), per_user), type=pa.bool_()),
    })


class ChunkedWriter:
    """Commit numbered chunks to a hidden parts folder, then assemble the final file.

    The caller holds ``recsys.data.io.output_lock(path)`` while it writes (`recsys recommend`
    does, for its whole run): two writers of one output would mix their chunks."""

    def __init__(self, path: str | Path, fingerprint: dict[str, Any], *, resume: bool = False
                 ) -> None:
        self.path = Path(path)
        self.format = output_format(self.path)
        self.parts = self.path.parent / f".{self.path.name}.partial"
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.done = 0  # chunks 0..done-1 are committed
        self.chunk_rows: list[int] = []  # rows of each committed chunk
        progress = self.parts / PROGRESS_FILE
        if resume and progress.is_file():
            state = json.loads(progress.read_text())
            if state.get("fingerprint") != self.fingerprint:
                raise RecsysError(f"--resume: the partial output {self.parts} was made with other "
                                  "inputs or options; rerun them unchanged, or drop --resume to "
                                  "start over")
            self.done = int(state.get("done", 0))
            rows = state.get("rows")
            # A partial folder from before rows were recorded: count its parts.
            self.chunk_rows = ([int(n) for n in rows] if isinstance(rows, list)
                               and len(rows) == self.done
                               else [self._count_rows(i) for i in range(self.done)])
        else:
            if self.parts.exists():
                self._check_parts_folder()
                shutil.rmtree(self.parts)
            try:
                with writing(self.path):
                    self.parts.mkdir(parents=True)
                    self._save_progress()
            except RecsysError:
                self.discard()
                raise

    @property
    def rows(self) -> int:
        """Rows committed so far (all of them, a resumed run's earlier chunks included)."""
        return sum(self.chunk_rows)

    def _check_parts_folder(self) -> None:
        """The hidden folder is deleted only when it holds nothing but what a writer puts there."""
        bad = [e for e in os.listdir(self.parts) if not _PARTS_ENTRY.match(e)]
        if bad or not self.parts.is_dir():
            raise RecsysError(f"{self.parts}: holds {', '.join(bad[:3]) or 'no folder'} that "
                              "recsys did not write; move it away (recsys replaces only its "
                              "own partial output)")

    def _count_rows(self, index: int) -> int:
        part = self._part(index)
        if self.format == "parquet":
            return pq.read_metadata(part).num_rows
        if part.stat().st_size == 0:
            return 0
        options = pacsv.ReadOptions(autogenerate_column_names=True)
        return pacsv.read_csv(part, read_options=options).num_rows

    def discard(self) -> None:
        """Remove the parts folder (a write that failed for want of space must not keep it)."""
        shutil.rmtree(self.parts, ignore_errors=True)

    def _part(self, index: int) -> Path:
        return self.parts / f"part-{index:06d}.{self.format}"

    def _save_progress(self) -> None:
        write_json(self.parts / PROGRESS_FILE, {"fingerprint": self.fingerprint, "done": self.done,
                                                "rows": self.chunk_rows})

    def committed(self, index: int) -> bool:
        return index < self.done

    def write(self, index: int, table: pa.Table) -> None:
        """Commit chunk ``index`` (chunks arrive in order)."""
        if index != self.done:
            raise ValueError(f"chunk {index} written out of order (expected {self.done})")
        with atomic_path(self._part(index)) as tmp:
            if self.format == "parquet":
                pq.write_table(table, tmp)
            else:
                pacsv.write_csv(table, tmp, pacsv.WriteOptions(include_header=False))
        self.done = index + 1
        self.chunk_rows.append(table.num_rows)
        self._save_progress()

    def finish(self, schema: pa.Schema) -> Path:
        """Assemble the committed parts into the final file (atomically) and drop the parts."""
        with atomic_path(self.path) as tmp:
            if self.format == "parquet":
                with pq.ParquetWriter(tmp, schema) as writer:
                    for i in range(self.done):
                        table = pq.read_table(self._part(i))
                        if table.num_rows:
                            writer.write_table(table, row_group_size=table.num_rows)
            else:
                with open(tmp, "wb") as out:
                    out.write((",".join(f'"{c}"' for c in schema.names) + "\n").encode())
                    for i in range(self.done):
                        with open(self._part(i), "rb") as part:
                            shutil.copyfileobj(part, out, 1 << 20)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path
