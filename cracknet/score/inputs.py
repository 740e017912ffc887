"""What a scoring run is asked to score, streamed as Arrow batches of (image_uri, version).

    cracknet score --input s3://survey/2026-11-24/             # a folder or prefix: listed page by page
    cracknet score --input s3://survey/tonight.parquet         # a manifest: Parquet or CSV with image_uri
    cracknet score --input s3://inventory/survey/all/2026-11-24T01-00Z/manifest.json   # an S3 Inventory report

A listing is never held whole: each kind yields record batches that the planner
(``planning.plan``) consumes once. Only image names (jpg, jpeg, png, tif) are
taken from folder listings and inventories; a manifest names images on purpose,
so every row of it is kept and a bad one becomes an error row.

The version of an image is its S3 ETag or, on local disk, its size and mtime. A
manifest may leave it out; such a row counts as scored once its URI was scored
at any version.
"""

from __future__ import annotations

import json
import os
from typing import Iterator
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc

from cracknet import storage
from cracknet.data.trees import IMAGE_EXTENSIONS
from cracknet.errors import CracknetError
from cracknet.numbers import MM_PER_PIXEL, checked

LISTING = pa.schema([("image_uri", pa.string()), ("version", pa.string())])
SCALE = "mm_per_pixel"  # a manifest column: each photo's scale (ground sample distance), millimetres per pixel
LISTING_ERROR = "listing_error"  # why a manifest's row cannot be scored as listed (a bad cell): an error row
SCALED_LISTING = LISTING.append(pa.field(SCALE, pa.float32())).append(pa.field(LISTING_ERROR, pa.string()))
MANIFEST_SUFFIXES = (".parquet", ".csv")
INVENTORY_FILE = "manifest.json"
URI_COLUMNS = ("image_uri", "uri", "path")
BATCH_ROWS = 64 * 1024
IMAGE_NAME = r"(?i)\.(" + "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS) + r")$"


def kind_of(uri: str) -> str:
    """``inventory``, ``manifest`` or ``folder``."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    if name == INVENTORY_FILE and storage.exists(uri):
        return "inventory"
    if name.endswith(MANIFEST_SUFFIXES) and storage.exists(uri):
        return "manifest"
    return "folder"


def input_root(input_uri: str, input_prefix: str | None) -> str:
    """Where images may come from: ``input_prefix``, else the input folder, or for a manifest its bucket (S3)
    or folder (local disk), or for an inventory the bucket it lists. Images named outside become error rows."""
    if input_prefix:
        return input_prefix
    kind = kind_of(input_uri)
    if kind == "folder":
        return input_uri
    if kind == "inventory":
        return storage.S3_PREFIX + _inventory(input_uri)[0]["sourceBucket"]
    if storage.is_s3(input_uri):
        return storage.S3_PREFIX + storage.split_s3(input_uri)[0]
    return os.path.dirname(os.path.abspath(input_uri))


def listing(input_uri: str, root: str) -> pa.RecordBatchReader:
    """The images of ``input_uri`` as a stream of (image_uri, version) batches; from a manifest with an
    ``mm_per_pixel`` column, (image_uri, version, mm_per_pixel) batches."""
    kind = kind_of(input_uri)
    schema = LISTING
    if kind == "inventory":
        batches = _inventory_batches(input_uri, *_inventory(input_uri), root)  # a bad manifest.json fails here
    elif kind == "manifest":
        batches = _manifest_batches(input_uri)
        schema = SCALED_LISTING if next(batches) else LISTING
    else:
        batches = _folder_batches(input_uri)
    return pa.RecordBatchReader.from_batches(schema, batches)


def _batch(uris, versions) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(uris, pa.string()), pa.array(versions, pa.string())],
                                      schema=LISTING)


def _folder_batches(uri: str) -> Iterator[pa.RecordBatch]:
    for page in storage.iter_versions(uri):
        uris = pa.array([u for u, _ in page], pa.string())
        keep = pc.match_substring_regex(uris, IMAGE_NAME)
        yield _batch(uris, [v for _, v in page]).filter(keep)


def _manifest_batches(uri: str) -> Iterator:
    """Whether the manifest gives each photo's scale, then its rows."""
    fs, path = storage.resolve(uri)
    csv = not uri.lower().endswith(".parquet")
    try:
        # Every named column as text: an all-digit ETag must not become a number, a bad scale cell not fail a column.
        batches = _file_batches(fs, path, csv, text_columns=(*URI_COLUMNS, "version", SCALE))
        names = next(batches)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CracknetError(f"{uri} is not a readable manifest ({type(exc).__name__}).") from None
    column = next((c for c in URI_COLUMNS if c in names), None)
    if column is None:
        raise CracknetError(f"The manifest {uri} has no image_uri column (columns: {', '.join(names)}).")
    yield SCALE in names
    folder = None if storage.is_s3(uri) else os.path.dirname(os.path.abspath(uri))
    try:
        for batch in batches:
            versions = batch.column("version").cast(pa.string()) if "version" in names else \
                pa.nulls(batch.num_rows, pa.string())
            yield _named_rows(batch.column(column).cast(pa.string()), versions,
                              batch.column(SCALE) if SCALE in names else None, folder)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CracknetError(f"{uri} is not a readable manifest ({type(exc).__name__}: {storage.reason(exc)}).") \
            from None


def _file_batches(fs, path: str, csv: bool, text_columns=(), column_names=None) -> Iterator:
    """The column names of a Parquet or CSV file, then its rows in batches, read with bounded memory
    (Parquet page by page, however large its row groups; CSV block by block, gzip or not)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if csv:
        read = pacsv.ReadOptions(column_names=column_names, block_size=1 << 20)
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in (column_names or text_columns)})
        compression = "gzip" if path.endswith(".gz") else None
        reader = pacsv.open_csv(fs.open_input_stream(path, compression=compression), read_options=read,
                                convert_options=convert)
        yield reader.schema.names
        yield from reader
        return
    parquet = pq.ParquetFile(fs.open_input_file(path), pre_buffer=False, buffer_size=1 << 20)
    yield parquet.schema_arrow.names
    yield from parquet.iter_batches(batch_size=BATCH_ROWS)


def _named_rows(uris: pa.Array, versions: pa.Array, scales: pa.Array | None = None,
                folder: str | None = None) -> pa.RecordBatch:
    """Rows that name an image, each keeping its own version (a missing version is ""), and with a scale column
    its scale (``scale_of``: an empty cell is null, the run's --mm-per-pixel; a bad cell is an error for that row).
    In a local manifest (``folder``), a relative path is relative to the manifest's folder."""
    keep = pc.and_(pc.is_valid(uris), pc.not_equal(uris, ""))
    if folder is not None:
        uris = pa.array([u if u is None or u.startswith(storage.S3_PREFIX) or os.path.isabs(u)
                         else os.path.join(folder, u) for u in uris.to_pylist()], pa.string())
    columns, schema = [uris, pc.fill_null(versions, "")], LISTING
    if scales is not None:
        parsed = [scale_of(cell) for cell in scales.to_pylist()]
        columns += [pa.array([p[0] for p in parsed], pa.float32()), pa.array([p[1] for p in parsed], pa.string())]
        schema = SCALED_LISTING
    return pa.RecordBatch.from_arrays(columns, schema=schema).filter(pc.fill_null(keep, False))


def scale_of(cell) -> tuple[float | None, str | None]:
    """A manifest's scale cell -> (mm per pixel, None), (None, None) for an empty cell, or (None, the reason) for
    a cell that is no scale: not a number, NaN, infinite, or outside ``numbers.MM_PER_PIXEL``."""
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        return None, None
    try:
        return checked(SCALE, cell, MM_PER_PIXEL), None
    except CracknetError as exc:
        return None, (f"The manifest's {str(exc).rstrip('.')}; give a scale in millimetres per pixel, or leave the "
                      "cell empty for the run's --mm-per-pixel.")


# ---------------------------------------------------------------------------------------------------
# S3 Inventory: manifest.json names data files (CSV.gz or Parquet) in the destination bucket.


def _inventory(uri: str) -> tuple[dict, list[str]]:
    """The inventory's manifest.json and the URIs of its data files."""
    if not storage.is_s3(uri):
        raise CracknetError(f"{uri} looks like an S3 Inventory manifest, but inventories live on S3.")
    try:
        doc = json.loads(storage.read_bytes(uri))
        bucket = doc["destinationBucket"].rsplit(":", 1)[-1]  # arn:aws:s3:::bucket
        files = [storage.S3_PREFIX + bucket + "/" + f["key"] for f in doc["files"]]
        doc["sourceBucket"], doc["fileFormat"]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CracknetError(f"{uri} is not an S3 Inventory manifest (it needs sourceBucket, destinationBucket, "
                            "fileFormat and files).") from None
    if doc["fileFormat"].upper() not in ("CSV", "PARQUET"):
        raise CracknetError(f"The inventory {uri} is in {doc['fileFormat']} format; cracknet reads CSV and Parquet "
                            "inventories.")
    return doc, files


def _normal(name: str) -> str:
    return name.replace("_", "").replace(" ", "").lower()  # "ETag", "e_tag" -> "etag"; "IsLatest" -> "islatest"


def _inventory_batches(uri: str, doc: dict, files: list[str], root: str) -> Iterator[pa.RecordBatch]:
    fs = storage.s3_filesystem()
    csv = doc["fileFormat"].upper() == "CSV"
    names = [n.strip() for n in doc.get("fileSchema", "").split(",")] if csv else None
    if csv and "key" not in map(_normal, names):
        raise CracknetError(f"The inventory {uri} names no Key column in its fileSchema.")
    prefix = root.rstrip("/") + "/"
    try:
        for data in files:  # CSV: no header row, columns named by fileSchema, keys URL-encoded
            batches = _file_batches(fs, storage.resolve(data)[1], csv, column_names=names)
            column = {_normal(n): n for n in next(batches)}
            for batch in batches:
                rows = batch.to_pydict()
                keys = rows[column["key"]]
                keys = [unquote_plus(k) for k in keys] if csv else keys
                buckets = rows[column["bucket"]] if "bucket" in column else [doc["sourceBucket"]] * len(keys)
                etags = rows[column["etag"]] if "etag" in column else [""] * len(keys)
                live = [_is_live(rows, column, i) for i in range(len(keys))]
                uris = pa.array([f"{storage.S3_PREFIX}{b}/{k}" for b, k in zip(buckets, keys)], pa.string())
                keep = pc.and_(pc.and_(pc.match_substring_regex(uris, IMAGE_NAME), pc.starts_with(uris, prefix)),
                               pa.array(live, pa.bool_()))
                yield _batch(uris, [(e or "").strip('"') for e in etags]).filter(keep)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CracknetError(f"Cannot read the inventory {uri}: {storage.reason(exc)}") from None


def _is_live(rows: dict, column: dict, i: int) -> bool:
    """The current version of an object, not a delete marker (inventories that include all versions)."""
    def flag(name: str) -> bool | None:
        if name not in column:
            return None
        value = rows[column[name]][i]
        return value if isinstance(value, bool) or value is None else str(value).lower() == "true"

    return flag("islatest") is not False and flag("isdeletemarker") is not True
