"""Pretrain one growth schedule: the ``ray job submit`` face of ``msg-ray train`` (same flags).

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}' \
        -- python -m pipelines.pretrain --schedule sch1-g --arch gpt --data openwebtext --workers 16 \
           --set use_gpu=true --set engine.precision=bf16 --set storage_path=/shared/msg_ray
"""

import sys

from msg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
