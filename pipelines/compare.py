"""Compare growth operators against full training: the ``ray job submit`` face of ``msg-ray compare``.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}' \
        -- python -m pipelines.compare --schedule mini-sch1-g --operators msg,net2net,nomask,full --seeds 3 \
           --lrs 1e-3,2e-3,3e-3 --lr-search-seeds 1 --evaluate --set storage_path=/shared/msg_ray

Same flags as ``msg-ray compare``; the table is printed and logged to the MLflow parent run, and
``msg-ray report <experiment>`` rebuilds it later from MLflow alone.
"""

import sys

from msg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
