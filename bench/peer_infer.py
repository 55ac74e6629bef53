"""The reference toolkit's side of bench/infer_cpu.py: run by the peer interpreter, never by ours.

    PEER_PYTHON -I bench/peer_infer.py AUDIO.npz CONFIG_NAME REPEATS THREADS

Builds the reference's model from its packaged ``mvector/configs/CONFIG_NAME.yml`` with random
weights, saves them as ``model.pth`` in a temporary folder, loads that through its own
``MVectorPredictor(use_gpu=False)`` and times ``predict`` (batch of one) or ``predict_batch`` on
the numpy arrays of each shape in AUDIO.npz (bench/peer_workload.py). Prints one JSON line
last: ``{shape: {"seconds": median, "audio_seconds": ..., "flops": ...}}`` or ``{"error": ...}``.
Run with ``-I`` from a temporary folder so that ``mvector`` is the reference, not this checkout.
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # -I leaves the script's folder out
from peer_workload import median_seconds, read_workload  # noqa: E402

REFERENCE_VERSION = "1.1.7"
SAMPLE_RATE = 16000


def fail(message):
    print(json.dumps({"error": message}))
    sys.exit(0)


def build_model_dir(config_name, folder):
    """The reference predictor loads ``model.pth`` of an ``nn.Sequential(backbone)``: write one."""
    import torch
    import yaml
    from mvector.data_utils.featurizer import AudioFeaturizer
    from mvector.models import build_model
    from mvector.utils.utils import dict_to_object

    config_path = Path(sys.modules["mvector"].__file__).parent / "configs" / f"{config_name}.yml"
    configs = dict_to_object(yaml.safe_load(config_path.read_text(encoding="utf-8")))
    pre = configs.preprocess_conf
    featurizer = AudioFeaturizer(feature_method=pre.feature_method, use_hf_model=pre.get("use_hf_model", False),
                                 method_args=pre.get("method_args", {}))
    backbone = build_model(input_size=featurizer.feature_dim, configs=configs)
    torch.save(torch.nn.Sequential(backbone).state_dict(), Path(folder) / "model.pth")


def main():
    audio_path, config_name, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
        import mvector
        from mvector.predict import MVectorPredictor
    except Exception as exc:
        fail(f"cannot import the reference toolkit: {type(exc).__name__}: {exc}")
    if getattr(mvector, "__version__", None) != REFERENCE_VERSION:
        fail(f"imported mvector {getattr(mvector, '__version__', '?')} from {mvector.__file__}, "
             f"not the reference {REFERENCE_VERSION}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        build_model_dir(config_name, folder)
        predictor = MVectorPredictor(configs=config_name, model_path=folder, use_gpu=False, log_level="error")
        for shape, batch in read_workload(audio_path).items():

            def embed():
                if len(batch) == 1:
                    return predictor.predict(batch[0], sample_rate=SAMPLE_RATE)
                return predictor.predict_batch(batch, sample_rate=SAMPLE_RATE)

            with FlopCounterMode(display=False) as counter:
                embed()
            embed()  # warm-up outside the counter, as bench/infer_cpu.py does for its own paths
            results[shape] = {"seconds": median_seconds(embed, repeats), "flops": counter.get_total_flops(),
                              "audio_seconds": sum(len(w) for w in batch) / SAMPLE_RATE}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
