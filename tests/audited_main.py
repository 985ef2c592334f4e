"""`python -m vqathinker_jax.main ...` that also records the files this process writes.

    VQA_WRITE_LOG=log python tests/audited_main.py --config ... --workdir ...

appends one line per path the process opens for writing, renames onto, copies to or
makes a directory at (Python's audit events: json, tensorboardX, tqdm, epath's local
files; C++ writers such as Orbax's TensorStore and TFDS's ArrayRecord are not seen). The
multi-process test reads it to tell which process wrote what in a shared workdir.
"""

import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _written(event: str, args) -> object:
  """The path an audit event writes, or None."""
  if event == "open":
    path, mode, flags = args
    if isinstance(mode, str):
      return path if any(c in mode for c in "wax+") else None
    return path if (flags or 0) & _WRITE_FLAGS else None
  if event == "os.rename":  # os.rename and os.replace
    return args[1]
  if event in ("os.mkdir", "shutil.copyfile"):
    return args[0] if event == "os.mkdir" else args[1]
  return None


def main():
  fd = os.open(os.environ["VQA_WRITE_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

  def hook(event, args):
    path = _written(event, args)
    if isinstance(path, (str, bytes, os.PathLike)):
      os.write(fd, os.fsencode(os.path.abspath(os.fsdecode(path))) + b"\n")

  sys.addaudithook(hook)
  sys.argv[0] = "vqathinker_jax.main"
  runpy.run_module("vqathinker_jax.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
