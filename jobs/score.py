"""Ray job entrypoint: score a folder of images with the registry's model, write Parquet.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/score.py --config configs/score.yaml --source /data/incoming --output /data/scores
"""
import sys

from dinoar_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
