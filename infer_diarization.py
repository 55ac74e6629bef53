"""Who spoke when in a recording: prints the segments, and writes RTTM, JSON and a timeline picture.

    python infer_diarization.py meeting.wav [--num_speakers N] [--name_speakers] [--rttm OUT.rttm] [--json OUT.json] [--plot OUT.png]
    python infer_diarization.py --list files.txt --rttm all.rttm

The number of speakers is estimated unless --num_speakers (or --min/--max_speakers) is given. With
--name_speakers each speaker is matched against the voiceprint library (--audio_db_path) and takes
the enrolled name when the score passes the threshold, else unknown-1, unknown-2, ...
Overlapping speech is given to one speaker.
"""
import sys

from mvector.apps.cli import add_backend_argument, add_device_argument, add_model_arguments, run_cli, script_parser
from mvector.apps.diarization import diarize_files


def parse_args(argv=None):
    parser = script_parser(__doc__, "infer_diarization.py")
    parser.add_argument("audio", nargs="*", help="recordings to diarize")
    parser.add_argument("--list", default=None, help="a file listing recordings, one path per line")
    parser.add_argument("--num_speakers", type=int, default=None, help="the number of speakers, when known")
    parser.add_argument("--min_speakers", type=int, default=1, help="fewest speakers to find")
    parser.add_argument("--max_speakers", type=int, default=None, help="most speakers to find (default: no bound)")
    parser.add_argument("--name_speakers", action="store_true", help="name speakers from the voiceprint library")
    parser.add_argument("--audio_db_path", default="audio_db/", help="voiceprint library for --name_speakers")
    parser.add_argument("--rttm", default=None, help="write the segments as RTTM here")
    parser.add_argument("--json", default=None, help="write the segments as JSON here")
    parser.add_argument("--plot", default=None,
                        help="draw a timeline PNG here (several recordings: one PNG each, named after it)")
    add_model_arguments(parser)
    add_device_argument(parser)
    add_backend_argument(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_cli(diarize_files, args.audio, args.list, num_speakers=args.num_speakers,
                     min_speakers=args.min_speakers, max_speakers=args.max_speakers, name_speakers=args.name_speakers,
                     rttm=args.rttm, json_path=args.json, plot=args.plot, model_dir=args.model_dir, model=args.model,
                     threshold=args.threshold, use_gpu=args.use_gpu, backend=args.backend,
                     audio_db_path=args.audio_db_path))
