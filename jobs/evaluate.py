"""Ray job entrypoint: metrics of a scores Parquet against an MVTec-layout test set."""
import sys

from dinoar_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
