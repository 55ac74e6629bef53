"""Package a trained model as the default pretrained model shipped inside mvector.

    python scripts/package_pretrained.py --model_dir models/EcapaTdnn_Fbank/last_model \
        [--name EcapaTdnn_Fbank | --out_dir DIR] [--trials ../shared/data/dev/trials.tsv]

Writes ``mvector/pretrained/<name>/`` (or ``--out_dir``) with the backbone's weights in fp16 (the
classifier and the training state are not needed to embed), the config and model.state, then
measures the EER threshold and the operating points through MVectorPredictor on the trials
(eval.py --save_threshold) and stores them there. A model card, LICENSE and NOTICE already in the
folder are kept.
"""
import argparse
import json
import sys
from pathlib import Path

from mvector.inference.threshold import calibrate
from mvector.model_dir import embedding_weights, read_model_dir, save_model_dir


ROOT = Path(__file__).resolve().parents[1]
KEEP_STATE = ("epoch", "step", "num_classes", "margin", "imported_from")
# Written by hand beside a shipped model's weights; a repackaging keeps them.
DOCUMENTS = ("MODEL_CARD.md", "LICENSE", "NOTICE")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="trained model directory")
    parser.add_argument("--name", default="EcapaTdnn_Fbank", help="folder name under mvector/pretrained/")
    parser.add_argument("--out_dir", help="write here instead of mvector/pretrained/<name>/")
    parser.add_argument("--trials", default=str(ROOT.parent / "shared" / "data" / "dev" / "trials.tsv"),
                        help="trial list the threshold is measured on")
    args = parser.parse_args(argv)
    config, weights, state = read_model_dir(args.model_dir)
    out = Path(args.out_dir) if args.out_dir else ROOT / "mvector" / "pretrained" / args.name
    kept = {k: state[k] for k in KEEP_STATE if k in state}
    documents = {name: (out / name).read_bytes() for name in DOCUMENTS if (out / name).is_file()}
    save_model_dir(out, embedding_weights(weights), config, kept, half=True)
    for name, content in documents.items():
        (out / name).write_bytes(content)
    result = calibrate(out, args.trials)
    print(json.dumps({"model_dir": str(out), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
