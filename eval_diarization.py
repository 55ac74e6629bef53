"""Score diarization against a reference RTTM: DER (miss, false alarm, confusion) per recording and
pooled, with overlapped speech scored and without, a ±0.25 s collar around each reference boundary
(the NIST convention), each recording scored over its whole length; computed by pyannote.metrics.

    python eval_diarization.py --audio_dir ../shared/data/diarization/ami --rttm ../shared/data/diarization/ami/reference.rttm
"""
import sys

from mvector.apps.cli import add_backend_argument, add_device_argument, add_model_arguments, run_cli, script_parser
from mvector.apps.diarization import evaluate_diarization


def parse_args(argv=None):
    parser = script_parser(__doc__, "eval_diarization.py")
    parser.add_argument("--audio_dir", required=True, help="folder of the recordings, named as in the RTTM")
    parser.add_argument("--rttm", required=True, help="reference RTTM")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--num_speakers", type=int, default=None, help="give every recording this many speakers")
    which.add_argument("--oracle_speakers", action="store_true",
                       help="give each recording its reference number of speakers")
    parser.add_argument("--hyp_rttm", default=None, help="write the system's segments as RTTM here")
    add_model_arguments(parser, threshold=False)
    add_device_argument(parser)
    add_backend_argument(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_cli(evaluate_diarization, args.audio_dir, args.rttm, num_speakers=args.num_speakers,
                     oracle_speakers=args.oracle_speakers, hypothesis_rttm=args.hyp_rttm, model_dir=args.model_dir,
                     model=args.model, use_gpu=args.use_gpu, backend=args.backend))
