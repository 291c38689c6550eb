"""Train state, optimizer and the jitted, sharded train step.

The state is a plain dict {step, params, ema_params, opt_state}: easy to shard by path
rules, to save with orbax and to restore onto another mesh. Per-step randomness is
fold_in(key(seed), step), so nothing random needs saving for an exact resume.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from imagebrush_jax.infra import parallel
from imagebrush_jax.training.options import TrainOptions

State = dict[str, Any]
LossFn = Callable[[Any, dict, jax.Array, bool], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a model gives the generic loop: init_params(rng) -> params; loss_fn(params, batch,
  rng, train) -> (loss, metrics), batch the global batch dict of arrays; the top-level parameter
  keys the optimizer leaves unchanged (a frozen autoencoder); the compute dtype, for MFU.
  Models with more to give (a sampler) subclass it."""
  init_params: Callable[[jax.Array], Any]
  loss_fn: LossFn
  frozen_keys: tuple[str, ...] = ()
  compute_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class Trainable:
  """An objective with its optimizer: what the train step and the loop run.

  flops_per_step(global batch) -> the step's model FLOPs, or None (the loop then takes XLA's).
  """
  objective: Objective
  optimizer: optax.GradientTransformation
  lr_schedule: optax.Schedule
  train: TrainOptions
  seed: int
  flops_per_step: Callable[[int], float] | None = None

  @property
  def loss_fn(self) -> LossFn:
    return self.objective.loss_fn

  def init_state(self, rng: jax.Array) -> State:
    params = self.objective.init_params(rng)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "ema_params": jax.tree.map(jnp.copy, params),
        "opt_state": self.optimizer.init(params),
    }


def make_trainable(objective: Objective, train: TrainOptions, seed: int,
                   *, flops_per_step: Callable[[int], float] | None = None) -> Trainable:
  """`objective` with config.train's optimizer (its frozen keys left unchanged); `seed` seeds
  the steps' randomness."""
  optimizer, schedule = make_optimizer(train)
  if objective.frozen_keys:
    optimizer = freeze(optimizer, objective.frozen_keys)
  return Trainable(objective=objective, optimizer=optimizer, lr_schedule=schedule,
                   train=train, seed=int(seed), flops_per_step=flops_per_step)


def freeze(optimizer: optax.GradientTransformation, keys: tuple[str, ...]
           ) -> optax.GradientTransformation:
  """`optimizer` on every top-level parameter but `keys`, whose updates are zero (no state)."""
  def labels(params):
    return {k: jax.tree.map(lambda _: "frozen" if k in keys else "train", v)
            for k, v in params.items()}

  return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


# ====================================================================== optimizer
def make_lr_schedule(tc: TrainOptions) -> optax.Schedule:
  """Linear warmup, then cosine decay to end_lr_fraction * lr, or constant.

  Update s (0-based, optax's count) uses the base schedule at s + 1: the first update gets
  learning_rate / warmup_steps instead of 0, warmup reaches the peak at update warmup_steps,
  and the last update of a cosine run gets the end value.
  """
  peak, warmup = float(tc.learning_rate), int(tc.warmup_steps)
  if tc.lr_schedule == "cosine":
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(int(tc.num_steps), warmup + 1), end_value=peak * float(tc.end_lr_fraction))
  elif tc.lr_schedule == "constant":
    base = optax.join_schedules(
        [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
        [warmup])
  else:
    raise ValueError(f"unknown lr_schedule {tc.lr_schedule!r}")
  return lambda step: base(step + 1)


DECAYED_PARAM_NAMES = ("kernel",)


def _decay_mask(params):
  """Weight decay on Dense / Conv kernels only, chosen by parameter name.

  Biases, norm scales, position / role / index embeddings (`pos_embed`, `Embed`'s
  `embedding`) and learned tokens (`null_token`) are left undecayed whatever their rank:
  shrinking them towards zero only removes what they encode.
  """
  def decayed(path, _):
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return name in DECAYED_PARAM_NAMES

  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(tc: TrainOptions) -> tuple[optax.GradientTransformation,
                                                           optax.Schedule]:
  schedule = make_lr_schedule(tc)
  parts = []
  if tc.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(tc.grad_clip_norm)))
  parts.append(optax.adamw(schedule, b1=float(tc.b1), b2=float(tc.b2), eps=float(tc.eps),
                           weight_decay=float(tc.weight_decay), mask=_decay_mask))
  return optax.chain(*parts), schedule


def ema_decay_at(step: jax.Array, tc: TrainOptions) -> jax.Array:
  """EMA decay, warmed up as min(decay, (1 + step) / (10 + step)) so early EMA tracks."""
  decay = jnp.asarray(float(tc.ema_decay), jnp.float32)
  if tc.ema_warmup:
    step = step.astype(jnp.float32)
    decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return decay


# ====================================================================== the step
def make_train_step(task: Trainable) -> Callable[[State, dict], tuple[State, dict]]:
  """Pure step: accumulates gradients over micro-batches, updates params and EMA."""
  tc = task.train
  accum = int(tc.grad_accum_steps)
  base_key = jax.random.key(task.seed)

  def loss_and_grads(params, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        params, batch, rng, True)
    return loss, metrics, grads

  def step_fn(state: State, batch: dict) -> tuple[State, dict]:
    rng = jax.random.fold_in(base_key, state["step"])
    params = state["params"]
    if accum == 1:
      loss, metrics, grads = loss_and_grads(params, batch, rng)
    else:
      # [B, ...] -> [accum, B/accum, ...]: micro-batch i takes every accum-th example, so
      # each micro-batch stays split over all devices like the full batch.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1),
          batch)

      def body(carry, xs):
        i, mb = xs
        loss, metrics, grads = loss_and_grads(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

      zeros = jax.eval_shape(loss_and_grads, params, jax.tree.map(lambda x: x[0], micro), rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
      (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
      loss, metrics, grads = jax.tree.map(lambda x: x / accum, (loss, metrics, grads))

    updates, opt_state = task.optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    decay = ema_decay_at(state["step"], tc)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state["ema_params"], new_params)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
               "learning_rate": task.lr_schedule(state["step"])}
    new_state = {"step": state["step"] + 1, "params": new_params, "ema_params": ema,
                 "opt_state": opt_state}
    return new_state, metrics

  return step_fn


def state_shapes_and_shardings(task: Trainable, mesh: Mesh, mesh_options: parallel.MeshOptions,
                               rng: jax.Array) -> tuple[Any, Any]:
  """(abstract state, its shardings on `mesh` per the sharding rules), without allocating."""
  abstract = jax.eval_shape(task.init_state, rng)
  return abstract, parallel.tree_shardings(abstract, mesh, mesh_options)


def init_sharded_state(task: Trainable, shardings: Any, rng: jax.Array) -> Any:
  """A fresh train state, initialised under jit straight onto `shardings`."""
  return jax.jit(task.init_state, out_shardings=shardings)(rng)


def jit_train_step(task: Trainable, mesh: Mesh, state_shardings: Any):
  """The step jitted with explicit shardings; the old state's buffers are donated."""
  return jax.jit(make_train_step(task),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,))


def fresh_sharded_state(task: Trainable, mesh_options: parallel.MeshOptions,
                        rng: jax.Array) -> tuple[Mesh, Any, Callable]:
  """(mesh, state, jitted step) of a new run on the mesh and sharding rules (benchmarks,
  tools); training/loop.py does the same around restoring a checkpoint."""
  mesh = parallel.make_mesh(mesh_options)
  _, shardings = state_shapes_and_shardings(task, mesh, mesh_options, rng)
  return mesh, init_sharded_state(task, shardings, rng), jit_train_step(task, mesh, shardings)
