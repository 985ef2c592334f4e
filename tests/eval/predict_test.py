"""`predict.predict` on synthetic videos with a corrupt and a missing file among them."""

import dataclasses
import pathlib

import numpy as np
import pytest

import one_device
import tiny_tokenizer
import tolerance
from data_pipelines import synthetic
from hf_tiny import TINY
from vqathinker_jax import model
from vqathinker_jax import factory
from vqathinker_jax.eval import predict
from vqathinker_jax.model import sharding
from vqathinker_jax.text import tokenizer as T
from vqathinker_jax.model.slowfast import SlowFastConfig


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = tiny_tokenizer.save(tiny_tokenizer.make_tokenizer(), tmp_path_factory.mktemp("tok"))
  return T.load_tokenizer(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp("videos")
  _, videos_dir = synthetic.generate(root, num_videos=3, seed=1, num_frames=16, height=64, width=64)
  videos_dir = pathlib.Path(videos_dir)
  (videos_dir / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
  return videos_dir


def test_folder_with_a_corrupt_and_a_missing_file(tok, videos):
  cfg = dataclasses.replace(TINY, image_token_id=tok.special.img_context,
                            motion=SlowFastConfig(width=8, pool_hw=2))
  m = model.init(cfg, seed=0, mesh=sharding.single_device_mesh())
  paths = predict.list_videos(str(videos)) + [videos / "missing.mp4"]
  assert len(paths) == 5 and paths[0].name < paths[1].name
  out = predict.predict(m, tok, paths, frames=12, size=56, max_new_tokens=8, batch_size=2)
  assert [p.video for p in out] == [str(p) for p in paths]  # input order kept
  bad = {pathlib.Path(p.video).name: p for p in out if p.error}
  assert set(bad) == {"corrupt.mp4", "missing.mp4"} and all(p.score is None for p in bad.values())
  good = [p for p in out if not p.error]
  assert len(good) == 3
  for p in good:  # a random model rarely answers: docs/method.md §5's fallback
    assert isinstance(p.text, str) and p.score == (p.score if p.parsed else 3.0)


def test_normalize_and_listing(tmp_path):
  white = np.full((1, 1, 1, 1, 3), 255, np.uint8)
  # A float32 subtraction and division of float64 constants: a couple of roundings.
  tolerance.assert_close(factory.normalize_frames(white)[0, 0, 0, 0],
                         (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                         4, name="normalised white")
  with pytest.raises(ValueError, match="no videos"):
    predict.list_videos(str(tmp_path))
  assert [p.name for p in predict.list_videos("a.mp4, b.mkv")] == ["a.mp4", "b.mkv"]


def test_main_predict_mode_end_to_end(tok, videos, tmp_path):
  """`python -m vqathinker_jax.main --config.mode=predict` on a folder holding a corrupt
  file: a tiny checkpoint (with its tokenizer) written by us, every good video scored."""
  import json
  import subprocess
  import sys
  cfg = dataclasses.replace(TINY, image_token_id=tok.special.img_context,
                            motion=SlowFastConfig(width=8, pool_hw=2))
  ckpt = tmp_path / "ckpt"
  model.save_pretrained(model.init(cfg, seed=0, mesh=sharding.single_device_mesh()), cfg, ckpt)
  tiny_tokenizer.save(tiny_tokenizer.make_tokenizer(), ckpt)
  root = pathlib.Path(__file__).resolve().parents[2]
  out = subprocess.run(
      [sys.executable, "-m", "vqathinker_jax.main", "--config", str(root / "configs/demo.py"),
       "--workdir", str(tmp_path / "wd"), "--config.mode=predict",
       f"--config.model.checkpoint={ckpt}", "--config.model.tokenizer=",  # the checkpoint's
       f"--config.predict.videos={videos}",
       "--config.predict.frames=12", "--config.predict.size=56",
       "--config.predict.max_new_tokens=8", "--config.predict.batch_size=2"],
      capture_output=True, text=True, timeout=300, env=one_device.env())
  assert out.returncode == 0, out.stderr[-2000:]
  preds = json.loads((tmp_path / "wd/predictions.json").read_text())
  assert len(preds) == 4 and sum(p["error"] is not None for p in preds) == 1
  assert "corrupt.mp4\tERROR\t" in out.stdout
