"""`dinoar <command>`: demo, train, score, evaluate. Parses, then calls the library."""
from __future__ import annotations

import argparse
import json
import sys

from .backbone import BackboneUnavailable
from .config import ConfigError, load_config
from .embed import TooManyErrors
from .nightly import NightlyBusy

# Errors that mean "your input is wrong"; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, BackboneUnavailable, TooManyErrors, NightlyBusy, FileNotFoundError, LookupError,
               ValueError)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dinoar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="embed -> train -> register -> score -> evaluate on sample or given data")
    p.add_argument("--data", default="", help="MVTec-layout dataset (default: built-in sample data)")
    _config_args(p)
    p = sub.add_parser("train", help="embed normals, fit the AR model, register it in MLflow")
    _config_args(p)
    p = sub.add_parser("score", help="score a folder of images with a registered model, write Parquet")
    p.add_argument("--source", required=True,
                   help="folder, glob, tar/zip shard(s), Parquet table of bytes, or CSV/Parquet manifest of URIs")
    p.add_argument("--output", required=True, help="Parquet output folder")
    p.add_argument("--model", default="", help="models:/<name>@<alias>, models:/<name>/<version>, or a version")
    p.add_argument("--nightly", action="store_true",
                   help="date-partitioned atomic output, skip images this model version already scored, report")
    p.add_argument("--date", default="", help="nightly: the night, YYYY-MM-DD (default today, UTC)")
    p.add_argument("--rescore", action="store_true", help="nightly: score again what was already scored")
    p.add_argument("--masks", default="", help="nightly: MVTec-layout root whose masks outline the overlays")
    _config_args(p)
    p = sub.add_parser("evaluate", help="metrics of a scores Parquet on an MVTec-layout test set")
    p.add_argument("--scores", required=True)
    p.add_argument("--data", required=True, help="MVTec-layout root")
    p.add_argument("--run-id", default=None, help="log into this MLflow run (default: a new one)")
    _config_args(p)
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    try:
        return _run(args, cfg)
    except USER_ERRORS as exc:  # bad input: one clear message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, cfg) -> int:
    if args.command == "demo":
        from .demo import format_report, run_demo
        print(format_report(run_demo(cfg, args.data)))
    elif args.command == "train":
        from .train import run_training
        print(json.dumps(run_training(cfg), indent=2, default=str))
    elif args.command == "score":
        if args.model:
            cfg.score.model = args.model
        if args.nightly:
            from .nightly import run_nightly
            result = run_nightly(cfg, args.source, args.output, args.date, args.rescore, args.masks)
        else:
            from .score import run_scoring
            result = run_scoring(cfg, args.source, args.output)
        print(json.dumps(result, indent=2, default=str))
    elif args.command == "evaluate":
        from .evaluate import run_evaluation
        print(json.dumps(run_evaluation(cfg, args.scores, args.data, args.run_id), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
