"""A stand-in for Google Cloud Storage on local disk: `gs://BUCKET/KEY` is `ROOT/BUCKET/KEY`.

`install(root)` makes this process's gs:// paths land there, with an object store's rules:
no appends, an object appears whole when its upload closes, directories are only key
prefixes (`mkdir` is a no-op; a prefix exists once an object is under it). It is wired in
where the real clients are:
- fsspec's `gs`/`gcs` protocols (what `etils.epath` uses for gs://, through gcsfs);
- Orbax's two direct GCS calls: TensorStore's kvstore spec for array data (here its
  `file` driver on the same folder) and the hierarchical-namespace probe (a flat bucket).

`python tests/fake_gcs.py ARGS` runs `vqathinker_jax.main` with it installed at
$FAKE_GCS_ROOT, so a test can pass `--workdir gs://bucket/run` to the real entry point.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile

import fsspec
from fsspec.spec import AbstractFileSystem

ROOT_ENV = "FAKE_GCS_ROOT"


def _has_objects(local: str) -> bool:
  return any(files for _, _, files in os.walk(local))


class _Upload(io.FileIO):
  """A write that becomes the object only on close (a temporary file renamed)."""

  def __init__(self, final: str, scratch: str):
    fd, tmp = tempfile.mkstemp(dir=scratch)
    os.close(fd)
    super().__init__(tmp, "wb")
    self._tmp, self._final = tmp, final

  def close(self):
    if not self.closed:
      super().close()
      os.makedirs(os.path.dirname(self._final), exist_ok=True)
      os.replace(self._tmp, self._final)


class FakeGCS(AbstractFileSystem):
  """fsspec file system for gs:// over `root` (names as gcsfs gives them: BUCKET/KEY)."""

  protocol = ("gs", "gcs")
  root = ""  # set by `install`

  def _local(self, path) -> str:
    return os.path.join(self.root, self._strip_protocol(path))

  def info(self, path, **kwargs):
    name = self._strip_protocol(path)
    local = self._local(path)
    if os.path.isfile(local):
      st = os.stat(local)
      return {"name": name, "size": st.st_size, "type": "file", "mtime": st.st_mtime}
    if os.path.isdir(local) and ("/" not in name or _has_objects(local)):
      return {"name": name, "size": 0, "type": "directory"}
    raise FileNotFoundError(path)

  def ls(self, path, detail=True, **kwargs):
    entry = self.info(path)
    if entry["type"] == "file":
      out = [entry]
    else:
      name, local = entry["name"], self._local(path)
      out = []
      for child in sorted(os.listdir(local)):
        try:
          out.append(self.info(f"{name}/{child}"))
        except FileNotFoundError:  # an empty local folder: no object under that prefix
          pass
    return out if detail else [e["name"] for e in out]

  def mkdir(self, path, create_parents=True, **kwargs):
    if "/" not in self._strip_protocol(path):  # a bucket
      os.makedirs(self._local(path), exist_ok=True)

  def makedirs(self, path, exist_ok=False):
    self.mkdir(path)

  def rmdir(self, path):
    local = self._local(path)
    if _has_objects(local):
      raise OSError(f"{path} is not empty")
    shutil.rmtree(local, ignore_errors=True)

  def rm_file(self, path):
    local = self._local(path)
    if os.path.isdir(local):
      self.rmdir(path)
    else:
      os.remove(local)

  def cp_file(self, path1, path2, **kwargs):
    if self.info(path1)["type"] == "directory":
      return  # prefixes are not objects
    with self._open(path2, "wb") as f, open(self._local(path1), "rb") as src:
      shutil.copyfileobj(src, f)

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode or "+" in mode:
      raise NotImplementedError(f"object stores cannot append or update in place: {mode=}")
    if "w" in mode or "x" in mode:
      scratch = os.path.join(self.root, ".uploads")
      os.makedirs(scratch, exist_ok=True)
      return io.BufferedWriter(_Upload(self._local(path), scratch))
    return open(self._local(path), mode)


def install(root: str) -> None:
  """Routes this process's gs:// paths to `root` (see the module docstring)."""
  from etils.epath import backend, gpath
  from orbax.checkpoint._src.path import gcs_utils

  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  FakeGCS.root = root
  for name in FakeGCS.protocol:
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  gpath._is_tf_installed = lambda: False  # pylint: disable=protected-access  # TF's gfile: real GCS

  def kvstore(path):
    bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(root, bucket, key)}

  gcs_utils.get_kvstore_for_gcs = kvstore
  gcs_utils.is_hierarchical_namespace_enabled = lambda path: False


if __name__ == "__main__":
  install(os.environ[ROOT_ENV])
  from absl import app
  from vqathinker_jax import main
  app.run(main.main)
