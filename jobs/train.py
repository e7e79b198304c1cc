"""Ray job entrypoint: embed normals, fit the AR model with Ray Train, register it in MLflow.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/train.py --config configs/train.yaml data.root=/data/mvtec/bottle
"""
import sys

from dinoar_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
