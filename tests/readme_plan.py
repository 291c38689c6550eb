"""The plan of the README tests (tests/test_readme_*.py): every command README.md and docs/*.md
show, with what it is run with at tiny size, or why it does not run here (those are checked for
their program, flags and config keys by tests/command_check.py); the inputs the commands read;
and run_chain, which runs one chain of commands as written (a subprocess each) in a test's
folder.

The only changes allowed to a command are appended overrides of steps and sizes and the root of
absolute data paths (/data/... -> a folder of the test). A command the documentation shows that
is not in PLAN fails tests/test_readme_commands.py, so no documented command can break unnoticed.

The commands that run fall into independent chains (each chain's commands read only what the
chain's earlier commands and its inputs make), so that the chains can run in different test
files, at the same time on different pytest-xdist workers.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess

import numpy as np
from PIL import Image

import published_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = ".venv/bin/python"


def readme_commands() -> list[str]:
  """The commands of the command blocks of README.md and docs/*.md (tests/doc_commands.py)."""
  import doc_commands  # pylint: disable=g-import-not-at-top
  return doc_commands.commands()


def _flags(*pairs: str) -> list[str]:
  return [f"--config.{p}" for p in pairs]


TINY_MODEL = ("model.unet.channels=(16,32)", "model.unet.attention=('self','self+cross')",
              "model.unet.num_heads=2", "model.unet.norm_groups=8", "model.prompt.vit.width=32",
              "model.prompt.vit.depth=1", "model.prompt.vit.num_heads=2",
              "model.prompt.mixer.width=32", "model.prompt.mixer.depth=1",
              "model.prompt.mixer.num_heads=2", "sampling.num_steps=2")
# No evaluation during these runs (0 grids): it has its own tests, and `make demo` evaluates.
TINY_STEPS = ("train.num_steps=2", "train.warmup_steps=1", "checkpoint.every=2",
              "data.num_workers=0", "data.eval_batch_size=4")
NO_EVAL = ("train.eval_num_grids=0", "train.sample_num_grids=0", "train.accuracy_num_grids=0")
TINY_RUN = TINY_STEPS + NO_EVAL
TINY_DEFAULT_DATA = ("data.tile_size=8", "data.crop_scale=1.25", "train.batch_size=8")
# configs/default.py or cpu_demo.py at tiny size (8-pixel tiles, as configs/tiny_test.py).
TINY_DEFAULT = _flags(*TINY_DEFAULT_DATA, *TINY_MODEL, *TINY_RUN)
# The demo keeps a small evaluation at its last step, for its accuracy curve and report.
TINY_DEMO = _flags(*TINY_DEFAULT_DATA, *TINY_MODEL, *TINY_STEPS, "train.eval_num_grids=4",
                   "train.sample_num_grids=4", "train.accuracy_num_grids=4")
# configs/paper_256.py and latent_tiny.py: 32-pixel tiles, 4x4 latents of an f = 8 autoencoder.
TINY_LATENT = _flags("data.tile_size=32", "model.prompt.image_size=0",
                     "model.prompt.vit.patch_size=8", "model.unet.num_res_blocks=1",
                     "train.batch_size=4", "train.grad_accum_steps=1", *TINY_MODEL, *TINY_RUN)
TINY_AUTOENCODER = _flags("autoencoder.arch.block_out_channels=(8,8,8,8)",
                          "autoencoder.arch.norm_num_groups=4", "train.batch_size=4",
                          "train.num_steps=2", "train.warmup_steps=1", "train.eval_every=2",
                          "train.eval_num_grids=8", "train.sample_num_grids=2",
                          "checkpoint.every=2", "data.num_workers=0")
# configs/paper_256_from_sd.py: TINY_LATENT in SD's UNet layout (the converted files' sizes).
TINY_FROM_SD = [f.replace("attention=('self','self+cross')", "attention=('self+cross','none')")
                for f in TINY_LATENT]
MIXTURE = '--config.data.mixture="((\'/data/ip2p_256\',1.0),(\'/data/video_256\',1.0))"'
PAPER = ('launch/local.sh configs/paper_256.py runs/paper '
         '--config.model.autoencoder.params=sd_vae.safetensors ' + MIXTURE)
CACHED = ('launch/local.sh configs/paper_256.py runs/paper_cached '
          '--config.model.autoencoder.params=sd_vae.safetensors '
          '--config.data.mixture="((\'/data/ip2p_256_sd_vae\',1.0),)" '
          '--config.data.cached_latents=True')

# The chains of commands that run, each run by one test (run_chain(chain, ...)), and what each
# leaves in its folder.
CHAINS: dict[str, list[str]] = {
    # make demo's run, then what reads it: infer, export, evaluate (tests/test_readme_commands.py)
    "demo": ["runs/demo/metrics.json", "runs/demo/report.png", "runs/demo/accuracy_curve.png",
             "out.png", "out/q_edited.png", "out_mh/q_edited.png", "metrics.json",
             "model.safetensors", "out_file.png"],
    # the tiny autoencoder, then the latent run in its latent space (tests/test_readme_commands.py)
    "latent_tiny": ["runs/autoencoder_tiny/autoencoder.safetensors",
                    "runs/latent_tiny/checkpoints/2"],
    # the published data sets built, the diffusers / transformers weights converted, the
    # paper_256 and paper_256_from_sd runs (tests/test_readme_paper.py)
    "paper": ["sd_vae.safetensors", "y.png", "vit.safetensors", "sd15_unet.safetensors",
              "clip_vit_b16.safetensors", "runs/paper/checkpoints/2",
              "runs/from_sd/checkpoints/2"],
    # default.py on a folder of pairs and on its built shards (tests/test_readme_training.py)
    "own_pairs": ["grids.png", "runs/mine/checkpoints/2", "runs/mine_shards/checkpoints/2"],
    # objects.py, evaluated and reported, and with 3 examples (tests/test_readme_training.py)
    "objects": ["runs/objects/metrics.json", "runs/objects/report.png",
                "runs/objects_k3/repeat_first.json"],
    # a data set built with cached latents, trained from them, resumed, evaluated
    # (tests/test_readme_cached_latents.py)
    "cached_latents": ["data/ip2p_256_sd_vae/latents.json", "runs/paper_cached/checkpoints/2",
                       "runs/paper_cached/checkpoints/4", "runs/paper_cached/metrics.json"],
}

# (command as the README shows it, what to append, and the chain that runs it; or the command,
# None and why it does not run here). Each chain's commands run in PLAN's order, which runs
# each command after the ones that make its inputs.
PLAN: list[tuple[str, list[str] | None, str]] = [
    (f"{PY} benchmarks/ceiling.py --tile_size 16", None,
     "run by tests/test_ceiling.py (its main, with few scenes)"),
    (f"{PY} benchmarks/ladder.py --rungs 0,1,2 --minutes 10 --ceiling --jsonl runs/ladder.jsonl",
     None, "hours of training; tests/test_ladder.py runs the tool at tiny size"),
    (f"{PY} benchmarks/ladder.py --rungs 2 --minutes 10 --oracle", None,
     "tests/test_ladder.py checks --oracle reaches training; tests/test_learning_options.py "
     "the oracle model"),
    (f"{PY} benchmarks/ladder.py --tasks hflip,vflip,rot90,invert,grayscale,swap_red_blue "
     "--oracle --mode regression --num_steps 250 --minutes 30 --config configs/objects_dit.py",
     None, "half an hour of training; tests/test_ladder.py runs the tool with --oracle and "
     "--mode regression at tiny size, tests/test_models_dit.py the DiT and its position bias"),
    (f"{PY} benchmarks/ladder.py --tasks hflip,vflip,rot90,invert,grayscale,swap_red_blue "
     "--num_steps 400 --minutes 60 --probe_other_grid --config configs/objects_dit.py", None,
     "an hour of training; tests/test_ladder.py checks the evaluations --probe_other_grid adds "
     "and runs the tool at tiny size, tests/test_models_dit.py the DiT and its position bias"),
    (f"{PY} benchmarks/ladder.py --tasks hflip,vflip,rot90,invert,grayscale,swap_red_blue "
     "--num_steps 400 --minutes 60 --oracle --config configs/objects_dit.py", None,
     "an hour of training; tests/test_ladder.py checks --oracle reaches training and runs the "
     "tool at tiny size, tests/test_models_dit.py the DiT and its position bias"),
    (f"{PY} benchmarks/ladder.py --rungs 0,1 --config configs/objects_dit.py --num_steps 300 "
     "--minutes 60 --ceiling", None,
     "an hour and a half of training; tests/test_ladder.py runs the tool with rung 0 at tiny "
     "size, tests/test_models_dit.py the DiT and its position bias"),
    (f"{PY} benchmarks/ladder.py --rungs 2 --config configs/objects_dit.py --num_steps 400 "
     "--minutes 60 --override diffusion.timestep_sampling=logit_normal", None,
     "an hour of training; tests/test_ladder.py runs the tool with --override at tiny size, "
     "tests/test_learning_options.py the timestep sampling"),
    (f"{PY} benchmarks/ladder.py --tasks hflip,vflip,rot90,invert,grayscale,swap_red_blue "
     "--num_steps 400 --minutes 60 --override \"model.unet.attention=('cross','self+cross',"
     "'self+cross')\"", None,
     "an hour of training; tests/test_ladder.py runs the tool with --override at tiny size"),
    (f"{PY} benchmarks/ladder.py --rungs 3,4 --config configs/objects_dit.py --num_steps 400 "
     "--minutes 50 --ceiling --probe_other_grid", None,
     "an hour and a half of training; tests/test_ladder.py runs the tool at tiny size"),
    (f"{PY} benchmarks/ladder.py --rungs 2 --config configs/objects_dit.py --num_steps 400 "
     "--minutes 60 --override diffusion.timestep_sampling=logit_normal --override "
     "diffusion.min_snr_gamma=5.0", None,
     "an hour of training; tests/test_ladder.py runs the tool with --override at tiny size, "
     "tests/test_learning_options.py the timestep sampling and weighting"),
    (f"{PY} benchmarks/ladder.py --tasks hflip,vflip,rot90,invert,grayscale,swap_red_blue "
     "--config configs/objects_dit.py --num_steps 600 --minutes 90 --curve_steps 100,200,400",
     None, "half an hour of training; tests/test_ladder.py runs --curve_steps at tiny size"),
    (f"{PY} benchmarks/ladder.py --rungs 2 --num_steps 400 --minutes 60 "
     "--config configs/objects_dit.py", None,
     "an hour of training; tests/test_ladder.py runs the tool at tiny size, "
     "tests/test_models_dit.py the DiT and its position bias"),
    (f"{PY} benchmarks/ladder.py --rungs 1 --minutes 10 --mode regression", None,
     "hours of training; tests/test_ladder.py checks the regression settings and runs the "
     "tool at tiny size"),
    ("make demo", ["DEMO_EVAL_GRIDS=4", "DEMO_FLAGS=" + shlex.quote(
        " ".join(shlex.quote(a) for a in TINY_DEMO))],
     "demo"),
    ("make test", None, "this test suite itself"),
    (f"{PY} -m imagebrush_jax.preview --config configs/default.py --num 16 --out grids.png",
     [], "own_pairs"),
    (f"{PY} -m imagebrush_jax.train --config configs/default.py --workdir runs/mine "
     "--config.data.source=folder --config.data.folder.root=/data/pairs "
     "--config.data.train_tasks=\"('mirror','neg')\" --config.data.heldout_tasks=\"()\"",
     TINY_DEFAULT, "own_pairs"),
    (f"{PY} -m imagebrush_jax.build_data --source folder --input /data/pairs "
     "--output /data/pairs_16 --tile_size 16", [], "own_pairs"),
    (f"{PY} -m imagebrush_jax.train --config configs/default.py --workdir runs/mine_shards "
     "--config.data.source=tfds --config.data.tfds.dir=/data/pairs_16 "
     "--config.data.train_tasks=\"()\" --config.data.heldout_tasks=\"()\"", TINY_DEFAULT,
     "own_pairs"),
    (".venv/bin/hf download timbrooks/instructpix2pix-clip-filtered --repo-type dataset "
     "--local-dir /data/ip2p", None, "a download; the test writes parquet shards in its layout"),
    ("wget https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip", None,
     "a download; the test writes DAVIS frame folders"),
    ("unzip DAVIS-2017-trainval-480p.zip -d /data", None,
     "unpacks the download; the test writes DAVIS frame folders"),
    (".venv/bin/hf download stabilityai/sd-vae-ft-mse config.json "
     "diffusion_pytorch_model.safetensors --local-dir sd-vae-ft-mse", None,
     "a download; the test writes a diffusers VAE folder"),
    (".venv/bin/hf download stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json "
     "unet/diffusion_pytorch_model.safetensors --local-dir stable-diffusion-v1-5", None,
     "a download; the test writes a diffusers pipeline folder"),
    (".venv/bin/hf download openai/clip-vit-base-patch16 config.json model.safetensors "
     "--local-dir clip-vit-base-patch16", None,
     "a download; the test writes a transformers CLIP vision folder"),
    (f"{PY} -m imagebrush_jax.tasks --list", [], "own_pairs"),
    (f"{PY} -m imagebrush_jax.tasks", [], "own_pairs"),
    (f"{PY} -m imagebrush_jax.summary --config configs/default.py", [], "own_pairs"),
    (f"{PY} -m imagebrush_jax.hardware", [], "own_pairs"),
    ("sudo apt install python3-venv", None, "installs a system package as root"),
    ("source .venv/bin/activate", None,
     "changes the calling shell; every test runs .venv/bin/python"),
    ("make clean", None, "removes runs/ and .pytest_cache here; checked with make -n"),
    ('make app APP_FLAGS="--examples /data/pairs --port 7861"', None,
     "a server; tests/test_app.py starts make app and the editor with --examples"),
    (f"{PY} -m imagebrush_jax.convert --from inception --input "
     "pt_inception-2015-12-05-6726825d.pth --output inception.safetensors", None,
     "pytorch-fid's weights are a download; tests/test_inception.py converts a small file in "
     "their layout"),
    ("gcloud auth application-default login", None, "needs a Google account"),
    ("gcsfuse --implicit-dirs bucket /mnt/bucket", None, "needs a bucket and gcsfuse"),
    ("gcloud storage cp -r /data/ip2p_256 /data/video_256 sd_vae.safetensors gs://bucket/", None,
     "needs a bucket; tests/test_cloud_storage.py runs gs:// paths on a local emulator"),
    ('gcloud compute tpus tpu-vm ssh ib-pod --zone=us-central2-b --worker=all '
     '--command="mkdir -p /data && gcloud storage cp -r gs://bucket/ip2p_256 gs://bucket/video_256 '
     'gs://bucket/sd_vae.safetensors /data/"', None, "needs gcloud and a TPU pod"),
    (f"{PY} -m imagebrush_jax.build_data --source ip2p --input /data/ip2p "
     "--output /data/ip2p_256 --heldout_fraction 0.02", ["--tile_size", "32"], "paper"),
    (f"{PY} -m imagebrush_jax.build_data --source video --input /data/DAVIS "
     "--output /data/video_256 --frame_gap 4 --heldout_fraction 0.1", ["--tile_size", "32"],
     "paper"),
    (f"{PY} -m imagebrush_jax.train --config configs/cpu_demo.py --workdir runs/demo "
     "--config.train.batch_size=64 --config.train.learning_rate=5e-4",
     [a for a in TINY_DEFAULT if "batch_size" not in a], "demo"),
    (f"{PY} -m imagebrush_jax.convert --from sd_vae --input sd-vae-ft-mse/ "
     "--output sd_vae.safetensors", [], "paper"),
    (f"{PY} -m imagebrush_jax.autoencode --params sd_vae.safetensors --input x.png "
     "--output y.png", [], "paper"),
    (PAPER, TINY_LATENT, "paper"),
    (f"{PY} -m imagebrush_jax.build_data --source ip2p --input /data/ip2p "
     "--output /data/ip2p_256_sd_vae --heldout_fraction 0.02 --autoencoder sd_vae.safetensors",
     ["--tile_size", "32"], "cached_latents"),
    (CACHED, TINY_LATENT, "cached_latents"),
    (CACHED, TINY_LATENT + ["--config.train.num_steps=4"], "cached_latents"),  # resumed
    (f"{PY} -m imagebrush_jax.evaluate --workdir runs/paper_cached --num_examples 256 "
     "--output runs/paper_cached/metrics.json",
     ["--num_examples", "8", "--steps", "2", "--batch_size", "4", "--no_cycle"],
     "cached_latents"),
    ("NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local.sh configs/tiny_test.py runs/mh", None,
     "run as written by tests/test_train.py::test_two_processes_match_one_process"),
    ("COORDINATOR_ADDRESS=10.0.0.1:12355 NUM_HOSTS=4 HOST_INDEX=0 launch/gpu_multinode.sh "
     "configs/paper_256.py /shared/runs/paper "
     "--config.model.autoencoder.params=/shared/sd_vae.safetensors --config.mesh.data=4 "
     "--config.mesh.fsdp=8", None, "needs four GPU hosts"),
    ('TPU_NAME=ib-pod ZONE=us-central2-b ACCELERATOR=v4-64 STEPS="create copy install" '
     "launch/tpu_pod.sh configs/paper_256_tpu_pod.py", None, "needs gcloud and a TPU pod"),
    ("TPU_NAME=ib-pod ZONE=us-central2-b WORKDIR=gs://bucket/runs/paper STEPS=train "
     "launch/tpu_pod.sh configs/paper_256_tpu_pod.py "
     "--config.model.autoencoder.params=/data/sd_vae.safetensors", None,
     "needs gcloud and a TPU pod"),
    (f"{PY} -m imagebrush_jax.train_autoencoder --config configs/autoencoder_tiny.py "
     "--workdir runs/autoencoder_tiny", TINY_AUTOENCODER, "latent_tiny"),
    (f"{PY} -m imagebrush_jax.train --config configs/latent_tiny.py --workdir runs/latent_tiny",
     TINY_LATENT, "latent_tiny"),
    (f"{PY} -m imagebrush_jax.convert --from vit --input model.safetensors "
     "--output vit.safetensors --num_heads 12", [], "paper"),
    (f"{PY} -m imagebrush_jax.convert --from sd_unet --input stable-diffusion-v1-5/ "
     "--output sd15_unet.safetensors --verify", [], "paper"),
    (f"{PY} -m imagebrush_jax.convert --from vit --input clip-vit-base-patch16/model.safetensors "
     "--output clip_vit_b16.safetensors --lossy", [], "paper"),
    ("launch/local.sh configs/paper_256_from_sd.py runs/from_sd " + MIXTURE, TINY_FROM_SD,
     "paper"),
    (f"{PY} -m imagebrush_jax.infer --workdir runs/demo --before a.png --after b.png "
     "--query q.png --output out.png --box 0,0,12,12 --steps 10 --guidance 1.0 --seed 0",
     ["--steps", "2"], "demo"),
    (f"{PY} -m imagebrush_jax.infer --workdir runs/demo --manifest rows.jsonl --output_dir out/",
     ["--steps", "2"], "demo"),
    ("NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local.sh infer --workdir runs/demo "
     "--manifest rows.jsonl --output_dir out_mh/", ["--steps", "2"], "demo"),
    ("COORDINATOR_ADDRESS=10.0.0.1:12355 NUM_HOSTS=4 HOST_INDEX=0 launch/gpu_multinode.sh infer "
     "--workdir /shared/runs/paper --manifest /shared/rows.jsonl --output_dir /shared/edits", None,
     "needs four GPU hosts; tests/test_infer_multiprocess.py runs it as 2 hosts on 127.0.0.1"),
    ("STEPS=infer TPU_NAME=ib-pod ZONE=us-central2-b launch/tpu_pod.sh infer "
     "--workdir gs://bucket/runs/paper --manifest gs://bucket/rows.jsonl "
     "--output_dir gs://bucket/edits", None,
     "needs gcloud and a TPU pod; tests/test_infer_multiprocess.py runs it with a stand-in gcloud"),
    (f"{PY} benchmarks/infer_throughput.py --config configs/cpu_demo.py", None,
     "tests/test_infer_multiprocess.py::test_infer_throughput_benchmark_at_tiny_size"),
    (f"{PY} -m imagebrush_jax.export --workdir runs/demo --output model.safetensors", [], "demo"),
    (f"{PY} -m imagebrush_jax.infer --params model.safetensors --before a.png --after b.png "
     "--query q.png --output out_file.png", ["--steps", "2"], "demo"),
    ("make venv-gpu", None, "installs jax's CUDA build (a download) and needs a GPU; "
     "tests/test_perf.py::test_accelerator_installs_pin_the_cpu_jax checks what it installs"),
    ("make venv-tpu", None, "installs jax's TPU build (a download) and needs a TPU; "
     "tests/test_perf.py::test_accelerator_installs_pin_the_cpu_jax checks what it installs"),
    (f"{PY} benchmarks/memory_plan.py --config configs/paper_256.py --fsdp 8 "
     "--remat nothing_saveable --batch_per_device 1,2,3,4,6,9 --jsonl runs/plan/paper_256.jsonl",
     None, "compiles six paper-size steps (about 3 minutes and 4 GiB each on 2 CPU cores); "
     "tests/test_memory_plan.py runs it as written at tiny size"),
    (f"{PY} benchmarks/memory_plan.py --config configs/paper_256.py --fsdp 1,8 "
     "--remat nothing_saveable --batch_per_device 36", None,
     "compiles two paper-size steps; tests/test_memory_plan.py runs the tool at tiny size"),
    (f"{PY} benchmarks/memory_plan.py --config configs/paper_256_from_sd.py --fsdp 8 "
     "--remat nothing_saveable --batch_per_device 4,6", None,
     "compiles two paper-size steps; tests/test_memory_plan.py runs the tool at tiny size"),
    (f"{PY} benchmarks/data_pipeline.py", None,
     "a measurement (about a minute here); checked for its flags"),
    (f"{PY} benchmarks/sampler.py", None,
     "a measurement (about 30 s here); checked for its flags"),
    (f"{PY} benchmarks/train_mfu.py --config configs/cpu_demo.py --steps 4 --pipeline", None,
     "a measurement (about a minute here); tests/test_perf.py runs train_mfu at tiny size"),
    (f"{PY} benchmarks/train_mfu.py --config configs/default.py --steps 4", None,
     "a measurement (about a minute here); tests/test_perf.py runs train_mfu at tiny size"),
    (f"{PY} benchmarks/sampler_throughput.py --config configs/default.py --batch 8", None,
     "a measurement; tests/test_perf.py::test_sampler_throughput_benchmark_at_tiny_size"),
    (f"{PY} benchmarks/unet_vs_diffusers.py --config small", None,
     "a measurement (minutes here); checked for its flags"),
    (f"{PY} benchmarks/autoencoder.py --config configs/latent_tiny.py "
     "--config.train.batch_size=8", None,
     "a measurement (minutes here: the pixel-space twin's step is slow on a CPU); checked for "
     "its flags"),
    (f"{PY} benchmarks/build_data.py", None,
     "a measurement (minutes here); checked for its flags"),
    (f"{PY} benchmarks/build_data.py --pairs 12 --autoencoder random", None,
     "a measurement (minutes here: the encoder on 2 CPU cores); checked for its flags"),
    ("XLA_FLAGS=--xla_force_host_platform_device_count=1 .venv/bin/python benchmarks/train_mfu.py "
     "--config configs/paper_256.py --batch_per_device 1 --compile_only --cached_latents", None,
     "compiles two paper-size steps (minutes, 4 GiB); tests/test_cached_latents.py runs "
     "--cached_latents --compile_only at tiny size"),
    ("benchmarks/accelerator.sh", None, "paper scale on an accelerator; "
     "tests/test_perf.py::test_accelerator_script_at_tiny_size runs it at tiny size"),
    ("make app", None, "a server: tests/test_app.py::test_make_app_serves_the_demo_run starts it "
                       "as written (on a tiny run, at a free port) and edits through its API"),
    (f"{PY} -m imagebrush_jax.evaluate --workdir runs/demo --num_examples 256 "
     "--output metrics.json", ["--num_examples", "8", "--steps", "2"], "demo"),
    (f"{PY} -m imagebrush_jax.train --config configs/objects.py --workdir runs/objects",
     TINY_DEFAULT, "objects"),
    (f"{PY} -m imagebrush_jax.evaluate --workdir runs/objects --num_examples 400 "
     "--output runs/objects/metrics.json --no_cycle", ["--num_examples", "8", "--steps", "2"],
     "objects"),
    (f"{PY} -m imagebrush_jax.demo_report --workdir runs/objects", [], "objects"),
    (f"{PY} -m imagebrush_jax.train --config configs/objects.py --workdir runs/objects_k3 "
     "--config.data.num_examples=3 --config.train.num_steps=600", TINY_DEFAULT, "objects"),
    (f"{PY} -m imagebrush_jax.evaluate --workdir runs/objects_k3 --num_examples 400 "
     "--output runs/objects_k3/repeat_first.json --no_cycle --example_pairs repeat_first",
     ["--num_examples", "8", "--steps", "2"], "objects"),
]


def make_inputs(work: str, *, published: bool = False, weights: bool = False) -> None:
  """What the commands read: the project linked into `work`, a pairs folder, images and a
  manifest; with `published`, data in the published data sets' layouts; with `weights`,
  diffusers / transformers weights folders and a ViT file."""
  for name in (".venv", "configs", "imagebrush_jax", "launch", "Makefile", "requirements.txt",
               "requirements-test.txt"):
    os.symlink(os.path.join(ROOT, name), os.path.join(work, name))
  rng = np.random.default_rng(0)
  for task, fn in (("mirror", lambda x: x[:, ::-1]), ("neg", lambda x: 255 - x)):
    os.makedirs(os.path.join(work, "data", "pairs", task))
    for i in range(6):
      before = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
      folder = os.path.join(work, "data", "pairs", task)
      Image.fromarray(before).save(os.path.join(folder, f"p{i}_before.png"))
      Image.fromarray(np.ascontiguousarray(fn(before))).save(os.path.join(folder,
                                                                          f"p{i}_after.png"))
  for name, size in (("a.png", (30, 40)), ("b.png", (30, 40)), ("q.png", (27, 35)),
                     ("x.png", (32, 32))):
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
        os.path.join(work, name))
  with open(os.path.join(work, "rows.jsonl"), "w") as f:
    f.write(json.dumps({"examples": [{"before": "a.png", "after": "b.png"}], "query": "q.png",
                        "output": "q_edited.png", "box": [0, 0, 20, 20]}) + "\n")
  if published:
    _make_published_data(work)
  if weights:
    _make_weights(work)


def _make_published_data(work: str) -> None:
  """InstructPix2Pix's parquet layout (3 instructions, 3 pairs each) and DAVIS frame folders."""
  os.makedirs(os.path.join(work, "data", "ip2p", "data"))
  # Held out by the README's fractions (a hash of the name below 0.02 and 0.1): one instruction
  # ("add a night sky") and one sequence ("goat").
  edits = ["Make it snowy", "add a moon", "add a night sky"]
  published_data.write_parquet(
      os.path.join(work, "data", "ip2p", "data", "train-00000-of-00001.parquet"),
      [(edits[i % 3], published_data.jpeg(2 * i, (40, 40)),
        published_data.jpeg(2 * i + 1, (40, 40))) for i in range(9)])
  published_data.write_davis(pathlib.Path(work, "data", "DAVIS"),
                             {"bear": 10, "car": 10, "goat": 10})


def _make_weights(work: str) -> None:
  """diffusers and transformers weights folders (a VAE, a Stable Diffusion pipeline, a CLIP
  vision tower) and a SigLIP ViT file, model.safetensors."""
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vae = diffusers.AutoencoderKL(  # f = 8: four levels
      in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
      layers_per_block=1, norm_num_groups=4, sample_size=32)
  vae.save_pretrained(os.path.join(work, "sd-vae-ft-mse"), safe_serialization=True)
  # A Stable Diffusion pipeline folder (unet/ at TINY_FROM_SD's sizes, vae/) and a CLIP vision
  # tower at the tiny prompt ViT's sizes.
  vae.save_pretrained(os.path.join(work, "stable-diffusion-v1-5", "vae"), safe_serialization=True)
  diffusers.UNet2DConditionModel(
      sample_size=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
      attention_head_dim=2, cross_attention_dim=32,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(
          os.path.join(work, "stable-diffusion-v1-5", "unet"), safe_serialization=True)
  transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
      image_size=32, patch_size=8)).save_pretrained(
          os.path.join(work, "clip-vit-base-patch16"), safe_serialization=True)
  vit = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=24, num_hidden_layers=1, num_attention_heads=12, intermediate_size=48,
      image_size=16, patch_size=4, hidden_act="gelu"))
  vit.save_pretrained(os.path.join(work, "vit_folder"), safe_serialization=True)
  os.rename(os.path.join(work, "vit_folder", "model.safetensors"),
            os.path.join(work, "model.safetensors"))


def run(command: str, extra: list[str], work: str) -> subprocess.CompletedProcess:
  """`command` with `extra` appended, /data/ rooted in `work`, run by bash in `work`."""
  quoted = extra if command.startswith("make ") else [shlex.quote(a) for a in extra]
  line = command.replace("/data/", f"{work}/data/") + "".join(" " + a for a in quoted)
  env = {**os.environ, "PYTHONPATH": work}
  return subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True,
                        timeout=900)


def check(command: str, proc: subprocess.CompletedProcess) -> None:
  """The command succeeded, and showed a user progress lines, not library INFO logs or restore
  warnings; a training run (other than on runs/demo, which `make demo` trained) its last step."""
  assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])
  for noise in ("Traceback", "could not be restored", "INFO:absl", "I0000 "):
    assert noise not in proc.stdout + proc.stderr, (command, noise, proc.stderr[-3000:])
  if " imagebrush_jax.train " in f" {command} " and "runs/demo" not in command:
    assert "step 2/2 | loss" in proc.stdout, (command, proc.stdout[-3000:])


def run_chain(chain: str, work: str) -> None:
  """Runs the commands of `chain`, in PLAN's order, in `work` (where make_inputs put what they
  read); each must pass check(), and the chain must leave its CHAINS files."""
  commands = [(command, extra) for command, extra, note in PLAN
              if extra is not None and note == chain]
  assert commands, chain
  for command, extra in commands:
    check(command, run(command, extra, work))
  missing = [p for p in CHAINS[chain] if not os.path.exists(os.path.join(work, p))]
  assert not missing, (chain, missing)
