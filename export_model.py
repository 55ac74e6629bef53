"""Export a model directory for deployment: ONNX and/or TorchScript (or a torch.export program),
the feature front-end inside the graph, config.yml and model.state written beside.

    python export_model.py --model_dir models/CAMPPlus_Fbank/best_model --out_dir exported/ --formats onnx,torchscript
    python export_model.py --model_dir ... --formats onnx --int8_calibration ../shared/data/train/list.tsv

Calibrate int8 on training speech, never on the evaluation set (its figures would flatter the graph).
"""
import sys

from mvector.apps.cli import export, run_cli, script_parser
from mvector.inference.export import DEFAULT_FORMATS, EXPORT_FORMATS


def parse_args(argv=None):
    parser = script_parser(__doc__, "export_model.py")
    parser.add_argument("--model_dir", required=True, help="model directory to export")
    parser.add_argument("--out_dir", default="exported/", help="where to write the exported model")
    parser.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                        help=f"comma-separated, from: {', '.join(EXPORT_FORMATS)}")
    parser.add_argument("--int8_calibration",
                        help="folder or list (path<TAB>label) of speech: also write model.int8.onnx, the "
                             "convolutions quantized to int8 (run it with backend='onnx-int8' or "
                             "'openvino-int8')")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_cli(export, args.model_dir, args.out_dir, args.formats, args.int8_calibration))
