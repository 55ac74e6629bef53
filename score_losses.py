"""Score every training utterance's loss with a trained model, for sample-loss curation.

    python score_losses.py --model_dir models/CAMPPlus_Fbank/last_model --out losses.tsv

Writes ``path<TAB>label<TAB>loss``; point ``train_conf.curation.loss_file`` at it to leave the
hardest (likely mislabelled) and easiest utterances out of later epochs.
"""
import argparse
import logging
import sys

from mvector.errors import MVectorError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="trained model directory (e.g. .../last_model)")
    parser.add_argument("--train_list", help="list to score (default: the model's dataset_conf.train_list)")
    parser.add_argument("--out", required=True, help="output TSV path<TAB>label<TAB>loss")
    parser.add_argument("--max_duration", type=float,
                        help="score the central this-many seconds; 0 = whole utterance "
                             "(default: dataset_conf.eval_max_duration)")
    parser.add_argument("--batch_size", type=int, help="utterances per batch (default: dataset_conf.eval_batch_size)")
    parser.add_argument("--num_workers", type=int, help="audio decoding workers (default: dataset_conf.num_workers)")
    parser.add_argument("--use_gpu", default="auto", choices=("auto", "true", "false"), help="score on CUDA")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        from mvector.lists import write_loss_file
        from mvector.training.curation import score_losses
        from mvector.training.distributed import select_device

        rows = score_losses(args.model_dir, args.train_list, device=select_device(args.use_gpu),
                            batch_size=args.batch_size, max_duration=args.max_duration,
                            num_workers=args.num_workers, progress=not args.no_progress)
        write_loss_file(rows, args.out)
    except MVectorError as exc:
        print(f"score_losses.py: error: {exc}", file=sys.stderr)
        return 1
    losses = sorted(loss for _, _, loss in rows)
    print(f"scored {len(rows)} utterances -> {args.out} (loss median {losses[len(losses) // 2]:.4f}, "
          f"max {losses[-1]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
