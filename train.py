"""Train a speaker-embedding model.

    python train.py --configs configs/cam++.yml [--override train_conf.max_epoch=5 ...]
    python train.py --configs configs/tdnn.yml configs/recipes/backbone_table.yml
    python -m torch.distributed.run --nproc_per_node=2 train.py --configs configs/cam++.yml

Checkpoints go to <save_model_path>/<model>_<feature method>/{best_model,last_model,epoch_N};
--resume continues from last_model at the step it was saved, --pretrained DIR starts from another
model's weights (a different classifier is reported, not an error).
"""
import logging
import sys

from mvector.apps.cli import add_device_argument, log_to_stderr, run_cli, script_parser, train


def parse_args(argv=None):
    parser = script_parser(__doc__, "train.py")
    parser.add_argument("--configs", nargs="+", default=["configs/cam++.yml"],
                        help="YAML training config; several are laid over each other in order, e.g. a "
                             "backbone's config and a recipe")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key, e.g. train_conf.max_epoch=5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from <model dir>/last_model")
    parser.add_argument("--pretrained", metavar="DIR", help="model directory to initialise the weights from")
    parser.add_argument("--allow_partial", action="store_true",
                        help="with --pretrained: load what fits even when backbone tensors do not")
    parser.add_argument("--save_model_path", default="models/", help="where model directories go")
    add_device_argument(parser, default="auto")
    parser.add_argument("--log_dir", default="log/", help="VisualDL log directory")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    log_to_stderr(logging.INFO)
    return run_cli(train, **vars(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
