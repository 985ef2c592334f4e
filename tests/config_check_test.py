"""config_check names every bad field with what is wrong, all problems at once."""

import pathlib
import runpy
import subprocess
import sys

import pytest

import one_device
from vqathinker_jax import config_check

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(name="demo.py", *args):
  return runpy.run_path(str(ROOT / "configs" / name))["get_config"](*args)


def _problems(config, **kwargs) -> str:
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(config, **kwargs)
  return str(e.value)


@pytest.mark.parametrize("num_devices", [None, 1, 8])
def test_demo_config_validates(num_devices):
  config_check.validate(_config(), num_devices=num_devices)


@pytest.mark.parametrize("num_devices", [None, 1, 4])
def test_base_config_validates_without_paths(num_devices):
  config_check.validate(_config("base.py"), num_devices=num_devices, check_paths=False)


def _set(**fields):
  """A mutation setting dotted fields, e.g. _set(**{"grpo.top_p": 0.0})."""
  def mutate(c, tmp_path):
    for path, value in fields.items():
      *parents, leaf = path.split(".")
      node = c
      for p in parents:
        node = node[p]
      node[leaf] = value(tmp_path) if callable(value) else value
  return mutate


NOT_SYNTHETIC = {"data.synthetic.enabled": False, "sft.answer": "label"}
# (id, mutation, validate kwargs, substrings the message must hold)
CASES = [
    ("unknown_field", _set(**{"grpo.num_generation": 1}), {},
     ["config.grpo.num_generation: unknown field (did you mean num_generations?)"]),
    ("bad_mode", _set(mode="dance"), {},
     ["config.mode='dance': must be one of 'train', 'eval', 'predict', 'smoke'"]),
    ("one_generation", _set(**{"grpo.num_generations": 1}), {},
     ["config.grpo.num_generations=1: must be >= 2"]),
    ("batch_vs_mesh", _set(**{"train.batch_size": 6}), {"num_devices": 4},
     ["config.train.batch_size=6: not divisible by the 4 batch shards of mesh data=1 × fsdp=4"]),
    ("eval_batch_vs_mesh", _set(**{"mesh.data": 2, "mesh.fsdp": 2, "eval.batch_size": 6}),
     {"num_devices": 4},
     ["config.eval.batch_size=6: not divisible by the 4 batch shards of mesh data=2 × fsdp=2"]),
    ("mesh_product", _set(**{"mesh.fsdp": 2, "mesh.tensor": 2}), {"num_devices": 8},
     ["config.mesh: data=1 × fsdp=2 × tensor=2 uses 4 devices, but 8 are available"]),
    ("mesh_free_axis", _set(**{"mesh.data": 3}), {"num_devices": 8},
     ["config.mesh: data=3 × fsdp=-1 × tensor=1 needs a multiple of 3 devices, but 8"]),
    ("mesh_two_free", _set(**{"mesh.data": -1}), {},
     ["config.mesh: at most one axis may be -1"]),
    ("mesh_zero", _set(**{"mesh.tensor": 0}), {},
     ["config.mesh.tensor=0: must be a positive int or -1"]),
    ("missing_data_dir", _set(**NOT_SYNTHETIC, **{"data.data_dir": lambda p: str(p / "nope")}),
     {}, ["config.data.data_dir=", "no such directory"]),
    ("unset_data_dir", _set(**NOT_SYNTHETIC), {},
     ["config.data.data_dir='': must be set for mode='train'"]),
    ("missing_data_set", _set(**NOT_SYNTHETIC, **{"data.data_dir": str}), {},
     ["config.data.train: 'synthetic' at 6x56 under config.data.data_dir=", "is not built",
      "python -m data_pipelines.prepare --name synthetic", "--frames 6 --size 56",
      "config.eval.sets: 'synthetic' at 6x56"]),
    ("missing_checkpoint", _set(**{"model.checkpoint": lambda p: str(p / "ckpt")}), {},
     ["config.model.checkpoint=", "no such directory"]),
    ("checkpoint_without_config", _set(**{"model.checkpoint": str}), {},
     ["config.model.checkpoint=", "has no config.json"]),
    ("missing_slowfast", _set(**{"model.slowfast_weights": lambda p: str(p / "sf.st")}), {},
     ["config.model.slowfast_weights=", "no such file", "convert_slowfast"]),
    ("no_tokenizer", _set(**{"model.tokenizer": ""}), {},
     ["config.model.tokenizer='': mode='train' needs a tokenizer: set model.tokenizer, "
      "model.checkpoint, or 'demo'"]),
    ("bad_loss_type", _set(**{"grpo.loss_type": "ppo"}), {},
     ["config.grpo.loss_type='ppo': must be one of 'grpo', 'bnpo', 'dapo', 'dr_grpo'"]),
    ("bad_kl", _set(**{"grpo.kl_estimator": "k4"}), {},
     ["config.grpo.kl_estimator='k4': must be one of 'k1', 'k2', 'k3'"]),
    ("size_not_28", _set(**{"data.size": 100}), {},
     ["config.data.size=100: must be a positive multiple of 28 (ViT patch 14 x pixel-shuffle 2)"
      ", e.g. 112"]),
    ("eval_size_not_28", _set(**{"eval.size": 500}), {},
     ["config.eval.size=500: must be a positive multiple of 28"]),
    ("top_p_zero", _set(**{"grpo.top_p": 0.0}), {},
     ["config.grpo.top_p=0.0: must be in (0, 1]"]),
    ("temperature_zero", _set(**{"grpo.temperature": 0.0}), {},
     ["config.grpo.temperature=0.0: must be > 0"]),
    ("profile_order", _set(**{"train.profile_start": 5, "train.profile_end": 3}), {},
     ["config.train.profile_end=3: the trace needs 0 <= config.train.profile_start < "
      "config.train.profile_end (got 5, 3)"]),
    ("image_token_vs_vocab", _set(**{"model.arch.image_token_id": 512}), {},
     ["config.model.arch.image_token_id=512: must be in [0, "
      "config.model.arch.text.vocab_size=512)"]),
    ("gqa_heads", _set(**{"model.arch.text.num_heads": 5}), {},
     ["config.model.arch.text.num_heads=5: must be a multiple of "
      "config.model.arch.text.num_kv_heads=2"]),
    ("think_template", _set(**{"sft.think": "It looks {score}."}), {},
     ["config.sft.think='It looks {score}.': must format with only {quality}", "KeyError"]),
    ("micro_batch", _set(**{"grpo.micro_batch_size": 3}), {},
     ["config.grpo.micro_batch_size=3: must divide config.train.batch_size=8"]),
    ("odd_synthetic", _set(**{"data.synthetic.height": 63}), {},
     ["config.data.synthetic.height=63: must be even and >= 2"]),
    ("sft_lr", _set(**{"sft.lr": 0.0}), {}, ["config.sft.lr=0.0: must be > 0"]),
    ("sft_answer", _set(**{"sft.answer": "mos"}), {}, ["config.sft.answer='mos': must be one of"]),
    ("random_scene_needs_scenes", _set(**{"sft.answer": "random_scene",
                                          "data.synthetic.scenes": 0}), {},
     ["config.sft.answer='random_scene': random_scene draws a score per scene"]),
    ("strengths", _set(**{"data.synthetic.strengths": "2,4"}), {},
     ["config.data.synthetic.strengths='2,4': must be levels among 1,2,3"]),
    ("exposure", _set(**{"data.synthetic.exposure": "unde"}), {},
     ["config.data.synthetic.exposure='unde': must be one of 'both', 'under', 'over' "
      "(did you mean 'under'?)"]),
    ("epochs", _set(**{"train.num_steps": 0, "train.num_epochs": -1}), {},
     ["config.train.num_epochs=-1: must be >= 0 (config.train.num_steps=0 takes"]),
    ("nothing_to_train", _set(**{"train.num_steps": 0, "train.num_epochs": 0, "sft.steps": 0}),
     {}, ["config.train.num_epochs=0: with config.train.num_steps=0 and config.sft.steps=0 "
          "nothing is trained"]),
    ("perturb_modes", _set(**{"data.perturb_modes": "reverse,rewind"}), {},
     ["config.data.perturb_modes='reverse,rewind': unknown modes ['rewind']"]),
    ("motion_frames", _set(**{"model.arch.motion.enabled": True, "data.frames": 5}), {},
     ["config.data.frames=5: SlowFast (motion branch on: config.model.arch.motion.enabled=True)",
      "training frame selection"]),
    ("motion_size", _set(**{"model.arch.motion.enabled": True}), {},
     ["config.data.size=56: SlowFast", "too small", "config.eval.frames=6: SlowFast",
      "evaluation frame selection"]),
    ("predict_needs_inputs", _set(mode="predict"), {},
     ["config.predict.videos='': must list video paths", "config.model.checkpoint='': must be "
      "set for mode='predict'"]),
    ("empty_eval_sets", _set(**{"eval.sets": " , "}), {},
     ["config.eval.sets=' , ': must name at least one data set"]),
    ("drop_path_rate", _set(**{"model.drop_path_rate": 1.0}), {},
     ["config.model.drop_path_rate=1.0: must be in [0, 1)", "or -1 (the checkpoint's own)"]),
    ("drop_path_rate_without_checkpoint", _set(**{"model.drop_path_rate": -1.0}), {},
     ["config.model.drop_path_rate=-1.0: -1 reads the rate from config.model.checkpoint's"]),
    ("reward_invalid", _set(**{"rewards.invalid": "rand"}), {},
     ["config.rewards.invalid='rand': must be one of 'zero', 'random' (did you mean "
      "'random'?)"]),
    ("reward_decimals", _set(**{"rewards.decimals": "float"}), {},
     ["config.rewards.decimals='float': must be one of 'written', 'float_str'"]),
]


@pytest.mark.parametrize("mutate, kwargs, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_malformed_config_names_field_and_reason(tmp_path, mutate, kwargs, expected):
  c = _config()
  mutate(c, tmp_path)
  message = _problems(c, **kwargs)
  for part in expected:
    assert part in message, message


def test_several_problems_are_reported_together():
  c = _config()
  c.grpo.num_generations = 1
  c.grpo.loss_type = "grp"
  c.data.size = 50
  c.train.batch_size = 6
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate(c, num_devices=4)
  lines = [line.strip() for line in str(e.value).splitlines()]
  assert lines[0] == "4 problems in the config:"
  assert len(e.value.problems) == 4 and len(lines) == 5
  assert "config.grpo.loss_type='grp': must be one of 'grpo', 'bnpo', 'dapo', 'dr_grpo' " \
         "(did you mean 'grpo'?)" in lines
  for field in ("grpo.num_generations=1", "data.size=50", "train.batch_size=6"):
    assert sum(f"config.{field}:" in line for line in lines) == 1


def test_types_are_checked_against_base():
  d = _config().to_dict()  # a plain dict: ConfigDict itself refuses most wrong types
  d["grpo"]["top_k"] = "50"
  d["grpo"]["temporal"] = 1
  d["train"]["optimizer"] = 1e-4
  d["grpo"]["temperature"] = 1  # an int where a float is expected is fine
  message = _problems(d)
  assert "config.grpo.top_k='50': must be an int, not str" in message
  assert "config.grpo.temporal=1: must be a bool (True/False), not int" in message
  assert "config.train.optimizer=0.0001: must be a section" in message
  assert "temperature" not in message


def test_missing_field_is_reported():
  d = _config().to_dict()
  del d["grpo"]["beta"]
  assert "config.grpo.beta: missing field" in _problems(d)


def test_unknown_fields_are_not_checked_without_base(monkeypatch):
  monkeypatch.setattr(config_check, "BASE_PATH", ROOT / "no_such_dir/base.py")
  config_check.base_config.cache_clear()
  try:
    c = _config()
    c.grpo.num_generation = 1
    config_check.validate(c)  # nothing to compare with: unknown fields pass
    c.grpo.num_generations = 1
    assert "config.grpo.num_generations=1" in _problems(c)
  finally:
    monkeypatch.undo()
    config_check.base_config.cache_clear()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A tiny synthetic set built by the real builder at the demo's 6x56: (data_dir, splits)."""
  from data_pipelines import builder, synthetic
  root = tmp_path_factory.mktemp("built")
  labels, videos = synthetic.generate(str(root / "src"), num_videos=8, num_frames=8,
                                      height=32, width=32)
  report = builder.build("synthetic", labels, videos, str(root / "data"), frames=6, size=56,
                         progress=False)
  assert set(report["splits"]) == {"train", "test"}
  return str(root / "data")


def _on_disk(data_dir):
  c = _config()
  c.data.synthetic.enabled = False
  c.sft.answer = "label"  # the demo's per-scene scores need the synthetic set's scenes
  c.data.update(data_dir=data_dir, train="synthetic")
  return c


def test_built_data_sets_are_found_where_the_pipeline_reads_them(built):
  from data_pipelines import pipeline
  config_check.validate(_on_disk(built))
  assert len(pipeline.data_source(built, "synthetic", "train", 6, 56)) == 7


def test_data_set_at_another_sampling_or_split_is_missing(built):
  c = _on_disk(built)
  c.eval.update(frames=12, split="validation")
  c.data.train_split = "all"
  message = _problems(c)
  assert "config.data.train: 'synthetic' at 6x56" in message
  assert "has splits ['test', 'train'] but not config.data.train_split='all'" in message
  assert "config.eval.sets: 'synthetic' at 12x56" in message
  assert f"--data_dir {built} --frames 12 --size 56" in message


def test_eval_mode_checks_only_eval_sets(built):
  c = _on_disk(built)
  c.mode = "eval"
  c.data.train = "lsvq_train"  # not built, but eval does not read it
  c.eval.sets = "synthetic,konvid_1k"
  message = _problems(c)
  assert "config.eval.sets: 'konvid_1k' at 6x56" in message
  assert "data.train" not in message and "'synthetic'" not in message


def test_paths_are_skipped_on_request(tmp_path):
  c = _config()
  c.model.checkpoint = str(tmp_path / "nope")
  c.data.synthetic.enabled = False
  c.sft.answer = "label"  # the demo's per-scene scores need the synthetic set's scenes
  config_check.validate(c, check_paths=False)


def test_workdir_is_a_directory_or_a_bucket_url(tmp_path, monkeypatch):
  import fsspec
  config_check.validate(_config(), workdir=tmp_path / "new")
  (tmp_path / "f").write_text("")
  assert "--workdir=" in _problems(_config(), workdir=tmp_path / "f")
  # What pathlib leaves of gs://b/run (a local folder gs:), and URLs no one can write.
  assert "gs:/b/run': a URL with one slash" in _problems(_config(), workdir="gs:/b/run")
  assert "gs:///run': no bucket" in _problems(_config(), workdir="gs:///run")
  assert "ftp:// is not one epath writes to" in _problems(_config(), workdir="ftp://h/run")

  def gcs_client(present):
    def get(protocol):
      if not present:
        raise ImportError("Please install gcsfs to access Google Storage")
      assert protocol == "gcs"  # what epath asks fsspec for, for gs://
      return fsspec.AbstractFileSystem
    return get
  monkeypatch.setattr(fsspec, "get_filesystem_class", gcs_client(present=True))
  config_check.validate(_config(), workdir="gs://b/run")
  monkeypatch.setattr(fsspec, "get_filesystem_class", gcs_client(present=False))
  assert "this Python cannot write gs://" in _problems(_config(), workdir="gs://b/run")


def test_slowfast_weights_need_a_checkpoint(tmp_path):
  weights = tmp_path / "sf.safetensors"
  weights.write_bytes(b"")
  c = _config()
  c.model.slowfast_weights = str(weights)
  assert "config.model.slowfast_weights=" in _problems(c)
  assert "needs config.model.checkpoint" in _problems(c)


def test_motion_branch_of_a_checkpoint_is_found(tmp_path):
  """A checkpoint holding SlowFast tensors turns the frame checks on."""
  import json
  import numpy as np
  from safetensors.numpy import save_file
  (tmp_path / "config.json").write_text(json.dumps({"llm_config": {}}))
  save_file({"slowfast_model.feature_extraction.0.x": np.zeros(1, np.float32)},
            str(tmp_path / "model.safetensors"))
  c = _config()
  c.model.checkpoint = str(tmp_path)
  message = _problems(c)
  assert "motion branch on: config.model.checkpoint has one" in message
  assert "config.data.size=56: SlowFast" in message


MAIN = ROOT / "vqathinker_jax/main.py"


@pytest.mark.skipif("config_check" not in MAIN.read_text(),
                    reason="main.py does not call config_check.validate yet")
def test_main_rejects_a_bad_config_before_compiling(tmp_path):
  env = one_device.env()
  out = subprocess.run(
      [sys.executable, "-m", "vqathinker_jax.main", "--config", "configs/demo.py",
       "--workdir", str(tmp_path / "w"), "--config.grpo.num_generations=1"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "config.grpo.num_generations=1: must be >= 2" in out.stderr, out.stderr[-2000:]
