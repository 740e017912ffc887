"""Storage: where every byte cracknet reads or writes lives, local disk or S3 (and compatibles), in one place.

    from cracknet import storage
    storage.read_bytes(storage.join("s3://survey/night-1", "a.jpg"))

``locations`` spells and checks locations (joining, canonical forms, what lies below what); ``objects`` reads,
writes, lists and deletes them, with retries and one-sentence failures. Every other stage goes through this
package, by these names. Beside them: ``lease`` (one scoring run per output at a time) and ``cluster`` (joining
or starting Ray). Imports only the core modules (``errors``, ``screen``).
"""

from cracknet.storage.locations import (NAME_SEGMENT_BYTES, REGISTRY_PREFIX, S3_PREFIX, absolute, canonical,
                                        check_location, is_s3, join, name_below, overlap, relative, split_s3, to_uri,
                                        within)
from cracknet.storage.objects import (BODY_READ_ATTEMPTS, content_hash, delete_file, delete_tree, delta_options,
                                      exists, iter_modified, iter_versions, list_files, out_of_reach, read_bytes,
                                      read_versioned, reason, require_bucket, resolve, s3_client, s3_filesystem,
                                      write_bytes)

__all__ = ["NAME_SEGMENT_BYTES", "REGISTRY_PREFIX", "S3_PREFIX", "absolute", "canonical", "check_location", "is_s3",
           "join", "name_below", "overlap", "relative", "split_s3", "to_uri", "within",
           "BODY_READ_ATTEMPTS", "content_hash", "delete_file", "delete_tree", "delta_options", "exists",
           "iter_modified", "iter_versions", "list_files", "out_of_reach", "read_bytes", "read_versioned", "reason",
           "require_bucket", "resolve", "s3_client", "s3_filesystem", "write_bytes"]
