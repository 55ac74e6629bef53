"""Build conversations with known turns from a corpus list, for tuning and scoring diarization.

    python simulate_conversations.py --list ../shared/data/dev/list.tsv --out dataset/conversations [--n 20] [--seed 0]

Writes conv000.wav ... (16 kHz) with conv000.rttm beside each, and reference.rttm holding all of
them, for eval_diarization.py --audio_dir OUT --rttm OUT/reference.rttm.
"""
import sys

from mvector.apps.cli import run_cli, script_parser
from mvector.apps.conversations import ConversationPlan, simulate_conversations


def parse_args(argv=None):
    parser = script_parser(__doc__, "simulate_conversations.py")
    parser.add_argument("--list", required=True, help="corpus list: relative/path<TAB>speaker_id")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=20, help="conversations to build")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed builds the same set")
    parser.add_argument("--min_speakers", type=int, default=2, help="fewest speakers in a conversation")
    parser.add_argument("--max_speakers", type=int, default=5, help="most speakers in a conversation")
    parser.add_argument("--min_seconds", type=float, default=60.0, help="shortest conversation")
    parser.add_argument("--max_seconds", type=float, default=120.0, help="longest conversation")
    parser.add_argument("--overlap_share", type=float, default=0.1, help="share of turns that overlap the previous one")
    return parser.parse_args(argv)


def main(args):
    plan = ConversationPlan(min_speakers=args.min_speakers, max_speakers=args.max_speakers,
                            min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                            overlap_share=args.overlap_share)
    out = simulate_conversations(args.list, args.out, n=args.n, seed=args.seed, plan=plan)
    print(f"{args.n} conversations in {out}; reference: {out / 'reference.rttm'}")


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args()))
