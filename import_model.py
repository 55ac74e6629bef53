"""Turn another toolkit's speaker-model checkpoint into an mvector model directory, usable by the
predictor, eval.py, export_model.py, the voiceprint library and train.py --pretrained.

    python import_model.py --from 3dspeaker --checkpoint campplus_cn_en_common.pt --out_dir models/campplus_3dspeaker

3dspeaker: a CAM++ state dict of 3D-Speaker (github.com/modelscope/3D-Speaker), e.g. ModelScope's
iic/speech_campplus_sv_zh_en_16k-common_advanced; the architecture is recognised from its tensors.
"""
import sys

from mvector.apps.cli import import_checkpoint, run_cli, script_parser

# mvector.pretrained.IMPORT_SOURCES' names, written out so that --help imports no torch.
SOURCES = ("3dspeaker",)


def parse_args(argv=None):
    parser = script_parser(__doc__, "import_model.py")
    parser.add_argument("--from", dest="source", required=True, help=f"checkpoint format: {', '.join(SOURCES)}")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint file")
    parser.add_argument("--out_dir", required=True, help="model directory to write (must not exist or be empty)")
    parser.add_argument("--architecture", help="the checkpoint's architecture (default: recognised from its tensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out_dir when it is a model directory")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_cli(import_checkpoint, args.source, args.checkpoint, args.out_dir, args.architecture,
                     args.overwrite))
