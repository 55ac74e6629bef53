"""Train a speaker-embedding model.

    python train.py --configs configs/cam++.yml [--override train_conf.max_epoch=5 ...]
    python -m torch.distributed.run --nproc_per_node=2 train.py --configs configs/cam++.yml

Checkpoints go to ``<save_model_path>/<model>_<feature method>/{best_model,last_model,epoch_N}``;
``--resume`` continues from ``last_model`` at the step it was saved, ``--pretrained DIR`` starts
from another model's weights (a different classifier is reported, not an error).
"""
import argparse
import logging
import sys

from mvector.errors import MVectorError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="configs/cam++.yml", help="YAML training config")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key, e.g. train_conf.max_epoch=5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <model dir>/last_model")
    parser.add_argument("--pretrained", metavar="DIR", help="model directory to initialise the weights from")
    parser.add_argument("--allow_partial", action="store_true",
                        help="with --pretrained: load what fits even when backbone tensors do not")
    parser.add_argument("--save_model_path", default="models/", help="where model directories go")
    parser.add_argument("--use_gpu", default="auto", choices=("auto", "true", "false"),
                        help="train on CUDA: auto (when present), true (required) or false")
    parser.add_argument("--log_dir", default="log/", help="VisualDL log directory")
    return parser.parse_args(argv)


class _TqdmHandler(logging.StreamHandler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take training down
            self.handleError(record)


def main(argv=None) -> int:
    args = parse_args(argv)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        from mvector.training.trainer import MVectorTrainer

        trainer = MVectorTrainer(args.configs, overrides=args.override, use_gpu=args.use_gpu,
                                 save_model_path=args.save_model_path, log_dir=args.log_dir)
        trainer.train(resume=args.resume, pretrained=args.pretrained, allow_partial=args.allow_partial)
    except MVectorError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or `timeout --signal=INT` (scripts/device_train.sh)
        print("train.py: interrupted; finished epochs and the last step checkpoint are kept "
              "(--resume continues from it)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
