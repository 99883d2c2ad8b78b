"""The worker's S3 helpers under the name deployments know, and a small bucket CLI.

    python s3_utils.py ls [PREFIX]        # keys, sizes and ETags under PREFIX (default: the voices prefix)
    python s3_utils.py presign KEY        # a presigned GET URL for KEY

The implementation is :mod:`f5worker.s3`; this module re-exports its public functions so that
``import s3_utils`` keeps working for scripts written against it. The bucket comes from the
``BUCKET_*`` variables, as for the worker.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from f5worker.s3 import (
    ObjectTooLarge,
    check_s3_object_exists,
    delete_objects,
    describe_error,
    download_file,
    list_s3_objects,
    make_client,
    presigned_url,
    put_text,
    read_text,
    upload_file,
)
from f5worker.settings import Settings, SettingsError

__all__ = [
    "ObjectTooLarge", "check_s3_object_exists", "delete_objects", "describe_error", "download_file",
    "list_s3_objects", "make_client", "presigned_url", "put_text", "read_text", "upload_file",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3_utils.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list keys under a prefix")
    ls.add_argument("prefix", nargs="?", help="default: VOICES_PREFIX")
    presign = commands.add_parser("presign", help="a presigned GET URL for a key")
    presign.add_argument("key")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as err:
        print(f"s3_utils: {err}", file=sys.stderr)
        return 1
    bucket = settings.bucket
    if not bucket.configured:
        print("s3_utils: BUCKET_NAME is not set", file=sys.stderr)
        return 1
    client = make_client(bucket, settings.s3)
    if args.command == "presign":
        print(presigned_url(client, bucket.name, args.key, settings.s3.presign_expires_s))
        return 0
    for obj in list_s3_objects(client, bucket.name, bucket.voices_prefix if args.prefix is None else args.prefix):
        print(f"{obj['Size']:>12,}  {obj['ETag']}  {obj['Key']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
