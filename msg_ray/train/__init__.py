"""One training run: DeepSpeed engine (``engine``), worker loop, checkpoints. Imports DeepSpeed lazily."""
