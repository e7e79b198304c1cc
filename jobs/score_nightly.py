"""Ray job entrypoint: the nightly scoring run.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/score_nightly.py --config configs/score.yaml \
            --source /mnt/archive --output /mnt/scores [--model models:/dinoar@champion] [--date 2026-12-03] [--rescore]
"""
import sys

from dinoar_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", "--nightly", *sys.argv[1:]]))
