"""Run settings shared by the built-in spaces: mini scale on WikiText-2 (CPU minutes), one worker per trial.

Not a space itself (names starting with "_" are skipped). Override per sweep with ``--set run.<key>=<value>``.
"""

MINI_RUN = {
    "data": {"source": "wikitext2", "tokenizer": "bpe8k", "seq_len": 64},
    "engine": {"zero_stage": 0, "micro_batch_size": 16, "lr": 1e-3},
    "warmup_steps": 20,
    "gamma_window": 20,
    "report_every": 5,
    "log_every": 10,
    "eval_every": 100,
    "eval_batches": 4,
    "export_hf": False,
}
