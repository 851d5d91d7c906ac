"""The per-worker step loop: batches, mask ramp, growth events, losses, evaluations, rates.

One ``WorkerRun`` per Ray Train worker (started by ``msg_ray.train.worker``). Steps count *optimizer* steps
(gradient accumulation runs ``engine.grad_accum`` micro-batches per step); growth and the mask ramp follow them.
At a stage start every rank probes the loss on a fixed batch, runs the growth event
(``msg_ray.train.growth_event.grow_engine``: gather -> grow -> carry -> rebuild -> ramp; same seed on every rank,
so identical new weights) and probes the same batch again; with ``msg`` the two losses must agree
(``growth/loss_jump``), which catches a broken operator in a real run.

The loop's other jobs live beside it: what a checkpoint holds and the final export (``msg_ray.train.snapshot``),
when the budget is spent and where the schedule stands on the step or wall-time axis (``msg_ray.train.budget``),
and what a diverged run does, stop or roll back (``msg_ray.train.divergence`` finds it,
``msg_ray.train.recovery`` decides).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from msg_ray.data import BlockLoader, prepare
from msg_ray.flops import flops_per_step, param_count
from msg_ray.growth import MaskRamp
from msg_ray.model import GrowableModel, build_from_config
from msg_ray.structure import Structure
from msg_ray.train import checkpoint as C
from msg_ray.train import divergence, faults, snapshot
from msg_ray.train.adaptive import AdaptiveGrowth, gamma_curve
from msg_ray.train.budget import Budget
from msg_ray.train.config import RunConfig
from msg_ray.train.engine import TrainState, build_engine, gather_state, restore_state, set_lr
from msg_ray.train.evaluation import batch_loss, evaluate, valid_batches
from msg_ray.train.growth_event import grow_engine
from msg_ray.train.lr import LRSchedule, stage_lr_multiplier
from msg_ray.train.metrics import RateMeter
from msg_ray.train.prefetch import DevicePrefetcher
from msg_ray.train.progress import StepLog, WorkerTracker
from msg_ray.train.recovery import Recovery
from msg_ray.train.reporting import Session


def _adaptive_policy(cfg: RunConfig):
    if cfg.adaptive is None:
        return None

    a = cfg.adaptive
    tg = a["target_gamma"]
    target = gamma_curve(tg["times"], tg["gammas"]) if isinstance(tg, dict) else float(tg)
    return AdaptiveGrowth(
        target,
        window=a.get("window", cfg.gamma_window),
        patience=a.get("patience", 3),
        min_stage_steps=a.get("min_stage_steps", cfg.schedule.phi),
        margin=a.get("margin", 0.05),
    )


class WorkerRun:
    def __init__(self, cfg: RunConfig, run_id: str | None, session: Session) -> None:
        self.session = session
        self.rank, self.world = session.rank, session.world
        self.attempt_dir = Path(cfg.storage_path) / cfg.name
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        self.cfg, self.sched = cfg, cfg.schedule
        # shards on remote storage are all on this node before the first step (none downloaded inside a step)
        self.data = prepare(cfg.data, mirror="now")
        self.loader = self._loader("train", cfg.seed)
        self.batches: DevicePrefetcher  # the loader's batches on the engine's device, one ahead (set with the engine)
        self.valid = valid_batches(
            self.data, cfg.eval_batches, cfg.engine.micro_batch_size, rank=self.rank, world_size=self.world
        )
        self.lr = LRSchedule(
            lr=cfg.engine.lr,
            total_steps=cfg.total_steps,
            warmup_steps=cfg.warmup_steps,
            decay=cfg.lr_decay,
            min_ratio=cfg.min_lr_ratio,
            reset_steps=tuple(self.sched.growth_steps()[: cfg.lr_reset_growths]),
        )
        self.budget = Budget(total_steps=cfg.total_steps, wall_budget_s=cfg.wall_budget_s, world=self.world)
        self.recovery = Recovery(
            on_divergence=cfg.on_divergence,
            max_rollbacks=cfg.max_rollbacks,
            lr_factor=cfg.rollback_lr_factor,
            storage=self.attempt_dir,
            rank=self.rank,
        )
        self.meter = RateMeter(cfg.gamma_window)
        self.pos = snapshot.Position()
        self._pending: list[tuple[int, float, float, torch.Tensor]] = []  # (step, wall, flops, loss on device)
        self._finished = False
        self.ramp: MaskRamp | None = None
        self.policy = _adaptive_policy(cfg)
        self.tracker = WorkerTracker(cfg, run_id, enabled=self.rank == 0)
        self.log = StepLog(cfg, enabled=self.rank == 0)

    # -- set-up ---------------------------------------------------------------------------------------------
    def _loader(self, split: str, seed: int) -> BlockLoader:
        """This rank's shard of ``split`` (``PreparedData.loader``) at the run's micro-batch size."""
        return self.data.loader(
            split, batch_size=self.cfg.engine.micro_batch_size, rank=self.rank, world_size=self.world, seed=seed
        )

    def _engine_for(self, model: GrowableModel, state: TrainState | None):
        engine = build_engine(model, self.cfg.engine)
        if state is not None:
            restore_state(engine, state)
        return engine

    def _start(self) -> None:
        ckpt = self.session.get_checkpoint()
        if ckpt is None:
            model = build_from_config(self.cfg.model_config(self.data.vocab_size), seed=self.cfg.seed)
            self.engine = self._engine_for(model, None)
            self.batches = DevicePrefetcher(self.loader, self.engine.device)
            return
        with ckpt.as_directory() as d:
            loaded, warning = C.load_or_previous(d, self.rank, self.attempt_dir)
        if warning:
            self.log.line(f"WARNING: {warning}")
        self._restore(loaded)

    def _restore(self, loaded: C.Loaded) -> None:
        r = snapshot.resumed(loaded)
        self.pos, self.recovery.rollbacks = r.pos, r.rollbacks
        model = build_from_config(self.cfg.model_config(self.data.vocab_size, self.structure))
        model.load_state_dict(r.model_state)  # recreates masks mid-ramp
        self.ramp = r.ramp
        if self.policy is not None and r.adaptive:
            self.policy.load_state_dict(r.adaptive)
        self.engine = self._engine_for(model, r.state)
        self.batches = DevicePrefetcher(self.loader, self.engine.device)  # a rollback drops the batch held ahead
        self.batches.load_state_dict(r.loader_state)
        if r.rng:  # absent when this rank did not exist when the checkpoint was taken
            C.set_rng_state(r.rng)
        self.log.line(f"resumed from {r.folder} (stage {self.pos.stage}, step {self.pos.step})")

    # -- one optimizer step ----------------------------------------------------------------------------------
    def _train_step(self) -> torch.Tensor:
        rule = stage_lr_multiplier(self.cfg.lr_scale, self.structure, self.sched.target)
        set_lr(self.engine, self.lr(self.budget.lr_step(self.pos.step)) * rule * self.recovery.lr_factor)
        total = None
        for _ in range(self.cfg.engine.grad_accum):
            loss = batch_loss(self.engine.module, next(self.batches), self.engine.device, self.engine)
            self.engine.backward(loss)
            self.engine.step()
            total = loss.detach().float() if total is None else total + loss.detach().float()
        return total / self.cfg.engine.grad_accum  # stays on the device: no host sync per step (see _flush)

    def _evaluate(self, batches: list[dict[str, torch.Tensor]]) -> float:
        """Mean loss over ranks on fixed ``batches``, in eval mode (``evaluation.evaluate``, a collective)."""
        return evaluate(self.engine.module, batches, self.engine.device, self.engine, self.world)

    # -- growth ------------------------------------------------------------------------------------------------
    def _grow(self, stage: int) -> TrainState:
        """The growth event at a stage start; returns the state the new engine holds (for the boundary checkpoint)."""
        self._flush()
        step, target = self.pos.step, self.sched.stages[stage].structure
        probe = [next(self._loader("train", self.cfg.seed + 7919 * stage))]
        before = self._evaluate(probe)
        grown = grow_engine(
            self.engine,
            self.cfg.model_config(self.data.vocab_size, self.structure),
            target,
            self.cfg.engine,
            step=step,
            phi=self.sched.phi,
            operator=self.sched.operator,
            depth_init=self.sched.depth_init,
            seed=self.cfg.seed * 1000 + stage,
        )
        self.engine, self.ramp, seconds = grown.engine, grown.ramp, grown.total_seconds
        after = self._evaluate(probe)
        self.pos.stage = stage
        self.meter.reset()
        if self.policy is not None:
            self.policy.reset(step)
        event = {
            "step": step,
            "stage": stage,
            "structure": str(target),
            "loss_before": before,
            "loss_after": after,
            "seconds": seconds,
        }
        self.pos.history["growth_steps"].append(step)
        self.pos.history["growth_events"].append(event)
        self.tracker.growth(event, self._n_params())
        jump = abs(after - before)
        if grown.preserving and jump > self.cfg.growth_check_tol:
            self.log.line(
                f"WARNING: growth changed the loss by {jump:.3g} (> {self.cfg.growth_check_tol}) although "
                f"operator {self.sched.operator!r} claims to preserve the function"
            )
        self.log.line(f"grew to {target} at step {step}: loss {before:.5f} -> {after:.5f} in {seconds:.2f}s")
        return grown.state

    @property
    def structure(self) -> Structure:
        """The structure trained now (stage-driven, so schedules whose growth times are decided online work)."""
        return self.sched.stages[self.pos.stage].structure

    def _n_params(self) -> int:
        return param_count(
            self.sched.arch,
            self.structure,
            self.data.vocab_size,
            self.cfg.data.seq_len,
            self.sched.head_dim,
            kv_group_size=self.sched.kv_group_size,
        )

    def _growth_due(self) -> bool:
        """Fixed schedule: at the next stage's start. Adaptive: when the policy says, at the latest at that start."""
        nxt = self.pos.stage + 1
        if nxt >= len(self.sched.stages):
            return False
        if self.budget.reached(self.sched.boundaries()[nxt], self.pos.step, self.ramp):
            return True
        growth_steps = self.pos.history["growth_steps"]
        stage_start = growth_steps[-1] if growth_steps else 0
        return self.policy is not None and self.policy.should_grow(self.pos.step, stage_start)

    # -- checkpoints (``snapshot``: what they hold) ------------------------------------------------------------
    def _checkpoint(self, final: bool = False, state: TrainState | None = None) -> None:
        """``state``: the engine's state when the caller already holds it (right after a growth), else gathered."""
        self._flush()
        if state is None:  # a collective: every rank takes part, only rank 0 (which writes) copies it to the host
            state = gather_state(self.engine, keep=self.rank == 0)
        module = self.engine.module
        with tempfile.TemporaryDirectory() as tmp:
            folder = snapshot.write(
                tmp,
                self.pos,
                self.cfg,
                final=final,
                rank=self.rank,
                world=self.world,
                state=state,
                module=module,
                ramp=self.ramp,
                loader_state=self.batches.state_dict(),  # the first batch not trained on (one is held ahead)
                run_id=self.tracker.run_id,
                adaptive=self.policy.state_dict() if self.policy else None,
                rollbacks=self.recovery.rollbacks,
            )
            if final and self.rank == 0:
                config = self.cfg.model_config(self.data.vocab_size, self.sched.target)
                card = snapshot.model_card(self.cfg, self.pos, self.tracker.run_id)
                snapshot.export_model(tmp, module, config, self.cfg.export_hf, self.data.tokenizer, card, state.params)
            self.session.report(self._metrics(), tmp, folder)

    # -- main loop -------------------------------------------------------------------------------------------
    def train(self) -> None:
        self._start()
        self.tracker.start(self._n_params(), self.structure, resumed=self.pos.step > 0)
        try:
            while True:
                try:
                    self._run_steps()
                    break
                except divergence.Diverged as d:
                    self._roll_back(d)
            self.tracker.finish(self.pos.history)
        except BaseException:
            self._pending.clear()  # a failed step's losses are not part of the history
            self.tracker.flush()
            raise

    def _run_steps(self) -> None:
        self._finished = self.budget.spent(self.pos.step, self.pos.wall, self.engine.device)
        while not self._finished:
            step = self.pos.step
            faults.maybe_kill(self.cfg.kill_rank_at_step, self.rank, step, self.attempt_dir)
            faults.maybe_stall(self.cfg.stall_rank_at_step, self.rank, step, self.attempt_dir, self.session.node_id)
            t0 = time.perf_counter()
            if self.ramp is not None:
                self.tracker.mask(self.ramp.apply(self.engine.module, step), step)
            if self._growth_due():  # the event applies its new ramp for this step
                state = self._grow(self.pos.stage + 1)
                self.pos.wall += time.perf_counter() - t0
                self._checkpoint(state=state)
                t0 = time.perf_counter()
            loss = self._train_step()
            if self._host_work_after(step + 1):
                self._sync()  # the device finishes the queued steps now, on the training clock (below)
            self.pos.wall += time.perf_counter() - t0
            self._after_step(loss)
        self._checkpoint(final=True)

    def _roll_back(self, d: divergence.Diverged) -> None:
        """Roll back to the newest checkpoint before the diverged step with a lower LR, or stop the run
        (``recovery.Recovery.target`` raises TrainingDiverged)."""
        self._pending.clear()
        last = self.pos.history["step"][-1] if self.pos.history["step"] else 0
        loaded = self.recovery.target(d, last)
        taken = self.recovery.rollbacks + 1
        self._restore(loaded)
        self.recovery.rollbacks = max(self.recovery.rollbacks, taken)
        self.pos.history.setdefault("rollbacks", []).append({"diverged_step": d.step, "to_step": self.pos.step})
        self.log.line(
            f"WARNING: {self.recovery.message(d, last)}; rolled back to {loaded.meta['folder']} "
            f"(step {self.pos.step}), LR x{self.recovery.lr_factor:g} from now on"
        )

    def _host_work_after(self, step: int) -> bool:
        """Whether step ``step`` is followed by work that reads the device: a log flush, an evaluation, a checkpoint,
        a report, the adaptive policy's per-step decision, or the end of a step budget."""
        c = self.cfg
        return (
            step % c.log_every == 0
            or step % c.eval_every == 0
            or self.policy is not None
            or bool(c.ckpt_every and step % c.ckpt_every == 0)
            or bool(c.report_every and step % c.report_every == 0)
            or (not c.wall_budget_s and step >= c.total_steps)
        )

    def _sync(self) -> None:
        """Wait for the device's queued work. The steps between two log points run without a host sync, so the
        device may lag the host by several steps; waiting here, inside the timed region, puts that lag on the
        training clock (tokens/s and MFU include the log flush) and keeps it off the evaluation or checkpoint that
        follows (their time is not training time)."""
        device = torch.device(self.engine.device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _flush(self) -> None:
        """Move the pending per-step losses to the host in one transfer (one sync per log interval, not per step)
        and feed them to the history, the γ meter and the adaptive policy, in step order."""
        if not self._pending:
            return
        losses = torch.stack([p[3] for p in self._pending]).tolist()
        nan_at = faults.nan_index(self.cfg.inject_nan_at_step, [p[0] for p in self._pending], self.attempt_dir)
        if nan_at is not None:
            losses[nan_at] = math.nan
        h = self.pos.history
        found = divergence.find(
            h["train_loss"],
            [(p[0], x) for p, x in zip(self._pending, losses, strict=True)],
            self.cfg.divergence_factor,
            self.cfg.divergence_window,
        )
        if divergence.agree(found, self.engine.device):  # before any checkpoint of the diverged weights is written
            raise found or divergence.Diverged(self._pending[-1][0], math.nan, "on another rank")
        for (step, wall, flops, _), loss in zip(self._pending, losses, strict=True):
            self.meter.update(step, wall, loss)
            if self.policy is not None:
                self.policy.update(step, wall, loss)
            for k, v in (("step", step), ("wall_s", wall), ("flops", flops), ("train_loss", loss)):
                h[k].append(v)
        self._pending.clear()

    def _after_step(self, loss: torch.Tensor) -> None:
        s, pos = self.structure, self.pos
        pos.flops += flops_per_step(
            self.sched, s, self.data.vocab_size, self.cfg.data.seq_len, self.cfg.tokens_per_step
        )
        pos.step += 1
        self._pending.append((pos.step, pos.wall, pos.flops, loss))
        h = pos.history
        self._finished = last = self.budget.spent(pos.step, pos.wall, self.engine.device)
        log_due = pos.step % self.cfg.log_every == 0 or last
        # On an accelerator, losses reach the host once per log interval (a per-step .item() is a device sync);
        # on CPU there is no sync to save, so the history is kept current every step.
        on_cpu = torch.device(self.engine.device).type == "cpu"
        if on_cpu or log_due or self.policy is not None or pos.step % self.cfg.eval_every == 0:
            self._flush()  # the adaptive policy decides on every step's loss
        if log_due:
            rates, loss_v = self.meter.rates(), h["train_loss"][-1]
            self.tracker.step(pos.step, loss_v, pos.wall, pos.flops, rates, s)
            self.tracker.metric("data/tokens_seen", self.batches.tokens_seen, pos.step)  # all ranks together
            self.tracker.metric("data/passes", self.batches.passes, pos.step)  # > 1: the corpus repeats
            self.log.step(pos.step, pos.stage, s, loss_v, rates, pos.wall)
        if pos.step % self.cfg.eval_every == 0 or last:
            val = self._evaluate(self.valid)
            h["val_step"].append(pos.step)
            h["val_loss"].append(val)
            self.tracker.metric("val/loss", val, pos.step)
        if self.cfg.ckpt_every and pos.step % self.cfg.ckpt_every == 0 and not last:
            self._checkpoint()
        elif self.cfg.report_every and pos.step % self.cfg.report_every == 0 and not last:
            self.tracker.flush()  # a scheduler may stop the trial at this report: its metrics must be in MLflow
            self.session.report(self._metrics())

    def _metrics(self) -> dict[str, Any]:
        """What Ray (and Tune's schedulers) see: progress on every time axis plus the current rates."""
        self._flush()
        pos, h = self.pos, self.pos.history
        recent = h["train_loss"][-self.cfg.gamma_window :]  # smoother than one step's loss, for ASHA
        out = {
            "step": pos.step,
            "stage": pos.stage,
            "train_loss": h["train_loss"][-1] if h["train_loss"] else float("nan"),
            "wall_s": pos.wall,
            "loss_avg": sum(recent) / len(recent) if recent else float("nan"),
            "flops": pos.flops,
            "val_loss": h["val_loss"][-1] if h["val_loss"] else float("nan"),
            **{k.split("/")[-1]: v for k, v in self.meter.rates().items()},
        }
        out.update(self.structure.as_dict())
        return out
