"""AR (causal, bidirectional, standard) vs kNN and Gaussian baselines on the same embeddings.

    python jobs/benchmark_quality.py --data ../shared/data/magnetic_tile --config configs/demo.yaml \
        backbone.name=random-init:vits16
Prints one table (also benchmark.md / benchmark.json under output_dir, and in MLflow).
"""
import argparse
import sys

from dinoar_ray.benchmark import run_quality_benchmark
from dinoar_ray.config import load_config

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="MVTec- or BMAD-layout dataset")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--knn-subsample", default="none", choices=["none", "random", "coreset"])
    parser.add_argument("--knn-ratio", type=float, default=0.1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, ["output_dir=runs/benchmark", *args.overrides])
    run_quality_benchmark(cfg, args.data, knn_subsample=args.knn_subsample, knn_ratio=args.knn_ratio)
    sys.exit(0)
