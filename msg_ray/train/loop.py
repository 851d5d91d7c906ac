"""The per-worker training loop: batches, mask ramp, growth events, rates, checkpoints.

One ``WorkerRun`` per Ray Train worker (started by ``msg_ray.train.worker``). Steps count *optimizer* steps
(gradient accumulation runs ``engine.grad_accum`` micro-batches per step); growth and the mask ramp follow them.
At a stage start every rank probes the loss on a fixed batch, runs the growth event
(``msg_ray.train.growth_event.grow_engine``: gather -> grow -> carry -> rebuild -> ramp; same seed on every rank,
so identical new weights) and probes the same batch again; with ``msg`` the two losses must agree
(``growth/loss_jump``), which catches a broken operator in a real run.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from msg_ray import growth as G
from msg_ray.data import BlockLoader, prepare
from msg_ray.flops import flops_per_token, param_count
from msg_ray.model import GrowableModel, build_from_config
from msg_ray.train import checkpoint as C
from msg_ray.train import divergence, faults
from msg_ray.train.adaptive import AdaptiveGrowth, gamma_curve
from msg_ray.train.config import RunConfig
from msg_ray.train.engine import TrainState, build_engine, gather_state, restore_state, set_lr
from msg_ray.train.growth_event import grow_engine
from msg_ray.train.lr import LRSchedule, stage_lr_multiplier
from msg_ray.train.metrics import RateMeter
from msg_ray.train.progress import StepLog, WorkerTracker
from msg_ray.train.reporting import DIVERGED, Session, TrainingDiverged


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
        self.data = prepare(cfg.data)
        self.loader = self._loader("train", cfg.seed)
        self.lr = LRSchedule(
            lr=cfg.engine.lr,
            total_steps=cfg.total_steps,
            warmup_steps=cfg.warmup_steps,
            decay=cfg.lr_decay,
            min_ratio=cfg.min_lr_ratio,
            reset_steps=tuple(self.sched.growth_steps()[: cfg.lr_reset_growths]),
        )
        self.meter = RateMeter(cfg.gamma_window)
        self.step, self.stage, self.wall, self.flops = 0, 0, 0.0, 0.0
        self.rollbacks = 0  # divergence rollbacks so far; the LR is scaled by rollback_lr_factor per rollback
        self._pending: list[tuple[int, float, float, torch.Tensor]] = []  # (step, wall, flops, loss on device)
        self._finished, self._agreed_wall = False, 0.0
        self.ramp: G.MaskRamp | None = None
        self.history: dict[str, list] = {
            "step": [],
            "wall_s": [],
            "flops": [],
            "train_loss": [],
            "val_step": [],
            "val_loss": [],
            "growth_steps": [],
            "growth_events": [],
        }
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
            return
        with ckpt.as_directory() as d:
            loaded, warning = C.load_or_previous(d, self.rank, self.attempt_dir)
        if warning:
            self.log.line(f"WARNING: {warning}")
        self._restore(loaded)

    def _restore(self, loaded: C.Loaded) -> None:
        m = loaded.meta
        self.step, self.stage, self.wall, self.flops = m["step"], m["stage"], m["wall_s"], m["flops"]
        self.rollbacks = m.get("rollbacks", 0)
        self.history = m["history"]
        model = build_from_config(self.cfg.model_config(self.data.vocab_size, self.structure))
        model.load_state_dict({**loaded.params, **loaded.buffers})  # recreates masks mid-ramp
        self.ramp = G.MaskRamp(**m["ramp"]) if m["ramp"] else None
        if self.policy is not None and m.get("adaptive"):
            self.policy.load_state_dict(m["adaptive"])
        mom = loaded.moments
        state = TrainState(params=loaded.params, exp_avg=mom["exp_avg"], exp_avg_sq=mom["exp_avg_sq"], step=mom["step"])
        self.engine = self._engine_for(model, state)
        rs = loaded.rank_state
        self.loader.load_state_dict(rs["loader"])
        if rs.get("rng"):  # absent when this rank did not exist when the checkpoint was taken
            C.set_rng_state(rs["rng"])
        self.history.setdefault("resumed_from", []).append(m["folder"])  # kept in every later checkpoint
        self.log.line(f"resumed from {m['folder']} (stage {self.stage}, step {self.step})")

    # -- one optimizer step ----------------------------------------------------------------------------------
    def _forward_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.engine.device
        logits = self.engine(batch["input_ids"].to(device))
        return self.engine.module.loss(logits, batch["labels"].to(device))

    def _train_step(self) -> torch.Tensor:
        rule = stage_lr_multiplier(self.cfg.lr_scale, self.structure, self.sched.target)
        set_lr(self.engine, self.lr(self._lr_step()) * rule * self.lr_factor)
        total = None
        for _ in range(self.cfg.engine.grad_accum):
            loss = self._forward_loss(next(self.loader))
            self.engine.backward(loss)
            self.engine.step()
            total = loss.detach().float() if total is None else total + loss.detach().float()
        return total / self.cfg.engine.grad_accum  # stays on the device: no host sync per step (see _flush)

    @torch.no_grad()
    def _probe(self, batch: dict[str, torch.Tensor]) -> float:
        """Mean loss over ranks on a fixed batch, in eval mode (no dropout)."""
        module = self.engine.module
        module.eval()
        loss = self._forward_loss(batch).detach().float().reshape(1)
        module.train()
        if self.world > 1:
            torch.distributed.all_reduce(loss)
            loss /= self.world
        return loss.item()

    def _evaluate(self) -> float:
        loader = self._loader("valid", 1234)
        losses = []
        for _ in range(self.cfg.eval_batches):
            losses.append(self._probe(next(loader)))
        return sum(losses) / len(losses)

    # -- growth ------------------------------------------------------------------------------------------------
    def _grow(self, stage: int) -> TrainState:
        """The growth event at a stage start; returns the state the new engine holds (for the boundary checkpoint)."""
        self._flush()
        target = self.sched.stages[stage].structure
        probe = next(self._loader("train", self.cfg.seed + 7919 * stage))
        before = self._probe(probe)
        grown = grow_engine(
            self.engine,
            self.cfg.model_config(self.data.vocab_size, self.structure),
            target,
            self.cfg.engine,
            step=self.step,
            phi=self.sched.phi,
            operator=self.sched.operator,
            depth_init=self.sched.depth_init,
            seed=self.cfg.seed * 1000 + stage,
        )
        self.engine, self.ramp, seconds = grown.engine, grown.ramp, grown.total_seconds
        after = self._probe(probe)
        self.stage = stage
        self.meter.reset()
        if self.policy is not None:
            self.policy.reset(self.step)
        event = {
            "step": self.step,
            "stage": stage,
            "structure": str(target),
            "loss_before": before,
            "loss_after": after,
            "seconds": seconds,
        }
        self.history["growth_steps"].append(self.step)
        self.history["growth_events"].append(event)
        self.tracker.growth(event, self._n_params())
        jump = abs(after - before)
        if grown.preserving and jump > self.cfg.growth_check_tol:
            self.log.line(
                f"WARNING: growth changed the loss by {jump:.3g} (> {self.cfg.growth_check_tol}) although "
                f"operator {self.sched.operator!r} claims to preserve the function"
            )
        self.log.line(f"grew to {target} at step {self.step}: loss {before:.5f} -> {after:.5f} in {seconds:.2f}s")
        return grown.state

    @property
    def lr_factor(self) -> float:
        return self.cfg.rollback_lr_factor**self.rollbacks

    @property
    def structure(self):
        """The structure trained now (stage-driven, so schedules whose growth times are decided online work)."""
        return self.sched.stages[self.stage].structure

    def _n_params(self) -> int:
        s = self.structure

        return param_count(
            self.sched.arch,
            s,
            self.data.vocab_size,
            self.cfg.data.seq_len,
            self.sched.head_dim,
            kv_group_size=self.sched.kv_group_size,
        )

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _checkpoint(self, final: bool = False, state: TrainState | None = None) -> None:
        """``state``: the engine's state when the caller already holds it (right after a growth), else gathered."""
        self._flush()
        state = state if state is not None else gather_state(self.engine)  # collective: every rank takes part
        folder = C.folder_name(self.stage, self.step, final)
        module = self.engine.module
        buffers = G.mask_state(module)
        meta = {
            "folder": folder,
            "step": self.step,
            "stage": self.stage,
            "wall_s": self.wall,
            "flops": self.flops,
            "structure": self.structure.as_dict(),
            "mask_c": G.mask_value(module),
            "ramp": None if self.ramp is None else {"start_step": self.ramp.start_step, "phi": self.ramp.phi},
            "run_id": self.tracker.run_id,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "world_size": self.world,
            "adaptive": self.policy.state_dict() if self.policy else None,
            "rollbacks": self.rollbacks,
        }
        rank_state = {"loader": self.loader.state_dict(), "rng": C.rng_state()}
        moments = {"exp_avg": state.exp_avg, "exp_avg_sq": state.exp_avg_sq, "step": state.step}
        with tempfile.TemporaryDirectory() as tmp:
            C.save(
                tmp,
                rank=self.rank,
                rank_state=rank_state,
                meta=meta,
                params=state.params,
                buffers=buffers,
                moments=moments,
            )
            if final and self.rank == 0:
                self._export(tmp, module)
            self.session.report(self._metrics(), tmp, folder)

    def _export(self, directory: str, module: torch.nn.Module) -> None:
        d, h = self.cfg.data, self.history
        card = {
            "schedule": self.sched.to_dict(),
            "growth_steps": h["growth_steps"],
            "steps": self.step,
            "data": {"source": d.source, "tokenizer": d.tokenizer, "seq_len": d.seq_len},
            "final_val_loss": h["val_loss"][-1] if h["val_loss"] else None,
            "run_id": self.tracker.run_id,
        }
        config = self.cfg.model_config(self.data.vocab_size, self.sched.target)
        self.tracker.export(directory, module, config, self.cfg.export_hf, self.data.tokenizer, card)

    def _last_loss(self) -> float:
        return self.history["train_loss"][-1] if self.history["train_loss"] else float("nan")

    # -- main loop -------------------------------------------------------------------------------------------
    def train(self) -> None:
        self._start()
        self.tracker.start(self._n_params(), self.structure, resumed=self.step > 0)
        try:
            while True:
                try:
                    self._run_steps()
                    break
                except divergence.Diverged as d:
                    self._on_divergence(d)
            self.tracker.finish(self.history)
        except BaseException:
            self._pending.clear()  # a failed step's losses are not part of the history
            self.tracker.flush()
            raise

    def _run_steps(self) -> None:
        self._finished = self._done()
        while not self._finished:
            faults.maybe_kill(self.cfg.kill_rank_at_step, self.rank, self.step, self.attempt_dir)
            faults.maybe_stall(
                self.cfg.stall_rank_at_step, self.rank, self.step, self.attempt_dir, self.session.node_id
            )
            t0 = time.perf_counter()
            if self.ramp is not None:
                self.tracker.mask(self.ramp.apply(self.engine.module, self.step), self.step)
            if self._growth_due():  # the event applies its new ramp for this step
                state = self._grow(self.stage + 1)
                self.wall += time.perf_counter() - t0
                self._checkpoint(state=state)
                t0 = time.perf_counter()
            loss = self._train_step()
            self.wall += time.perf_counter() - t0
            self._after_step(loss)
        self._checkpoint(final=True)

    def _on_divergence(self, d: divergence.Diverged) -> None:
        """Roll back to the newest checkpoint before the diverged step with a lower LR, or stop the run."""
        self._pending.clear()
        last = self.history["step"][-1] if self.history["step"] else 0
        msg = f"{DIVERGED}: {d}; finite up to step {last}"
        loaded = None
        if self.cfg.on_divergence == "rollback" and self.rollbacks < self.cfg.max_rollbacks:
            loaded = C.newest(self.attempt_dir, self.rank, before_step=d.step)
        if loaded is None:
            raise TrainingDiverged(
                f"{msg}. Lower engine.lr or raise warmup_steps (or set on_divergence=rollback); "
                "the checkpoints hold only finite states."
            )
        rollbacks = self.rollbacks + 1
        self._restore(loaded)
        self.rollbacks = max(self.rollbacks, rollbacks)
        self.history.setdefault("rollbacks", []).append({"diverged_step": d.step, "to_step": self.step})
        self.log.line(
            f"WARNING: {msg}; rolled back to {loaded.meta['folder']} (step {self.step}), "
            f"LR x{self.lr_factor:g} from now on"
        )

    # -- budget: steps, or wall seconds (``wall_budget_s``: stage starts, warm-up and LR decay read as fractions of
    # the nominal total_steps, on the wall-time axis; every decision uses the wall time all ranks agree on) ----------
    def _done(self) -> bool:
        """Whether the budget is spent (collective under a wall budget with several workers)."""
        budget = self.cfg.wall_budget_s
        if not budget:
            return self.step >= self.cfg.total_steps
        wall = torch.tensor([self.wall], dtype=torch.float64)
        if self.world > 1:  # the slowest rank's clock: ranks must agree on every growth and on the end
            torch.distributed.all_reduce(wall, op=torch.distributed.ReduceOp.MAX)
        self._agreed_wall = float(wall)
        return self._agreed_wall >= budget

    def _lr_step(self) -> float:
        """Where the LR schedule stands: the step, or under a wall budget the wall-time fraction of total_steps."""
        if not self.cfg.wall_budget_s:
            return self.step
        return self.cfg.total_steps * min(1.0, self._agreed_wall / self.cfg.wall_budget_s)

    def _stage_started(self, stage: int) -> bool:
        if not self.cfg.wall_budget_s:
            return self.step >= self.sched.boundaries()[stage]
        ramp_done = self.ramp is None or self.ramp.value(self.step) >= 1.0  # growths never overlap a ramp
        return ramp_done and self._lr_step() >= self.sched.boundaries()[stage]

    def _growth_due(self) -> bool:
        """Fixed schedule: at the next stage's start. Adaptive: when the policy says, at the latest at that start."""
        nxt = self.stage + 1
        if nxt >= len(self.sched.stages):
            return False
        if self._stage_started(nxt):
            return True
        stage_start = self.history["growth_steps"][-1] if self.history["growth_steps"] else 0
        return self.policy is not None and self.policy.should_grow(self.step, stage_start)

    def _flush(self) -> None:
        """Move the pending per-step losses to the host in one transfer (one sync per log interval, not per step)
        and feed them to the history, the γ meter and the adaptive policy, in step order."""
        if not self._pending:
            return
        losses = torch.stack([p[3] for p in self._pending]).tolist()
        nan_at = faults.nan_index(self.cfg.inject_nan_at_step, [p[0] for p in self._pending], self.attempt_dir)
        if nan_at is not None:
            losses[nan_at] = math.nan
        found = divergence.find(
            self.history["train_loss"],
            [(p[0], x) for p, x in zip(self._pending, losses, strict=True)],
            self.cfg.divergence_factor,
            self.cfg.divergence_window,
        )
        if divergence.agree(found):  # before any checkpoint of the diverged weights is written
            raise found or divergence.Diverged(self._pending[-1][0], math.nan, "on another rank")
        h = self.history
        for (step, wall, flops, _), loss in zip(self._pending, losses, strict=True):
            self.meter.update(step, wall, loss)
            if self.policy is not None:
                self.policy.update(step, wall, loss)
            for k, v in (("step", step), ("wall_s", wall), ("flops", flops), ("train_loss", loss)):
                h[k].append(v)
        self._pending.clear()

    def _after_step(self, loss: torch.Tensor) -> None:
        s = self.structure
        fpt = flops_per_token(
            self.sched.arch,
            s,
            self.data.vocab_size,
            self.cfg.data.seq_len,
            self.sched.head_dim,
            self.sched.kv_group_size,
        )
        self.flops += fpt * self.cfg.tokens_per_step
        self.step += 1
        self._pending.append((self.step, self.wall, self.flops, loss))
        h = self.history
        self._finished = last = self._done()
        log_due = self.step % self.cfg.log_every == 0 or last
        # On an accelerator, losses reach the host once per log interval (a per-step .item() is a device sync);
        # on CPU there is no sync to save, so the history is kept current every step.
        on_cpu = torch.device(self.engine.device).type == "cpu"
        if on_cpu or log_due or self.policy is not None or self.step % self.cfg.eval_every == 0:
            self._flush()  # the adaptive policy decides on every step's loss
        if log_due:
            rates, loss_v = self.meter.rates(), h["train_loss"][-1]
            self.tracker.step(self.step, loss_v, self.wall, self.flops, rates, s)
            self.tracker.metric("data/tokens_seen", self.loader.tokens_seen, self.step)  # all ranks together
            self.tracker.metric("data/passes", self.loader.passes, self.step)  # > 1: the corpus repeats
            self.log.step(self.step, self.stage, s, loss_v, rates, self.wall)
        if self.step % self.cfg.eval_every == 0 or last:
            val = self._evaluate()
            h["val_step"].append(self.step)
            h["val_loss"].append(val)
            self.tracker.metric("val/loss", val, self.step)
        if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0 and not last:
            self._checkpoint()
        elif self.cfg.report_every and self.step % self.cfg.report_every == 0 and not last:
            self.tracker.flush()  # a scheduler may stop the trial at this report: its metrics must be in MLflow
            self.session.report(self._metrics())

    def _metrics(self) -> dict[str, Any]:
        """What Ray (and Tune's schedulers) see: progress on every time axis plus the current rates."""
        self._flush()
        h = self.history
        recent = h["train_loss"][-self.cfg.gamma_window :]  # smoother than one step's loss, for ASHA
        out = {
            "step": self.step,
            "stage": self.stage,
            "train_loss": self._last_loss(),
            "wall_s": self.wall,
            "loss_avg": sum(recent) / len(recent) if recent else float("nan"),
            "flops": self.flops,
            "val_loss": h["val_loss"][-1] if h["val_loss"] else float("nan"),
            **{k.split("/")[-1]: v for k, v in self.meter.rates().items()},
        }
        out.update(self.structure.as_dict())
        return out
