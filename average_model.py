"""Average several checkpoints of one training run into a new model directory.

    python average_model.py --model_dirs models/EcapaTdnn_Fbank/epoch_{12..16} --out_dir models/EcapaTdnn_Fbank/avg_12-16
    python eval.py --model_dir models/EcapaTdnn_Fbank/avg_12-16

The weights are the element-wise mean (the last epochs of a run average to a better model than any
one of them, as in WeSpeaker's recipes); every directory must hold the same model and front-end.
``--backbone_only`` averages the embedding backbones alone, e.g. a fine-tuned model with the one
it started from when their classifier heads differ (a "model soup"). The result carries the
config of the last directory and is a model directory like any other (evaluate, export or ship
it), but not a training checkpoint: it cannot be resumed.
"""
import sys

from mvector.apps.cli import average, run_cli, script_parser


def parse_args(argv=None):
    parser = script_parser(__doc__, "average_model.py")
    parser.add_argument("--model_dirs", nargs="+", required=True, help="model directories to average")
    parser.add_argument("--out_dir", required=True, help="where to write the averaged model directory")
    parser.add_argument("--backbone_only", action="store_true",
                        help="average only the embedding backbones (checkpoints with different heads)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights in fp16: half the size, e.g. to carry a model off a GPU machine")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_cli(average, args.model_dirs, args.out_dir, args.backbone_only, args.half))
