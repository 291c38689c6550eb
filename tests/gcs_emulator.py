"""A local Cloud Storage emulator for the tests: gcp-storage-emulator, in memory, with the
generation preconditions on media downloads that tensorstore (orbax's array writer) relies on.

gcp-storage-emulator answers `GET ...?alt=media` without the `x-goog-generation` header and
ignores `ifGenerationMatch` / `ifGenerationNotMatch` there, as Cloud Storage does not:
tensorstore then fails with "Malformed StorageGeneration" when it re-reads an OCDBT manifest.
This wrapper adds both, as the real service behaves. Nothing else is changed.

    python tests/gcs_emulator.py --port 9023 [--bucket test]
"""
import argparse
import threading
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    return _download(request, response, storage, *args, **kwargs)
  generation = str(obj["generation"])
  not_match = request.query.get("ifGenerationNotMatch")
  match = request.query.get("ifGenerationMatch")
  if not_match and not_match[0] == generation:
    response.status = HTTPStatus.NOT_MODIFIED
    response["x-goog-generation"] = generation
    return None
  if match and match[0] != generation:
    response.status = HTTPStatus.PRECONDITION_FAILED
    return None
  response["x-goog-generation"] = generation
  response["x-goog-metageneration"] = str(obj["metageneration"])
  return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation  # before the server module builds its routes
from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top,wrong-import-position


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--bucket", default="test")
  args = p.parse_args()
  emulator = server.create_server("127.0.0.1", args.port, in_memory=True,
                                   default_bucket=args.bucket)
  emulator.start()
  print(f"listening on 127.0.0.1:{args.port}", flush=True)
  threading.Event().wait()


if __name__ == "__main__":
  main()
