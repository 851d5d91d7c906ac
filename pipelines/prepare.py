"""Prepare token shards: the ``ray job submit`` face of ``msg-ray data prepare`` (same flags).

    ray job submit --address http://HEAD:8265 --working-dir . \
        -- python -m pipelines.prepare --data /shared/corpus --tokenizer gpt2 --seq-len 1024 \
           --storage-path /shared/msg_ray/data
"""

import sys

from msg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "prepare", *sys.argv[1:]]))
