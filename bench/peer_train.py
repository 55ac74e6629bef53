"""The reference toolkit's side of bench/train_gpu.py: run by the peer interpreter, never with this
checkout's ``mvector`` importable.

    PYTHON -I bench/peer_train.py CONFIG_NAME FEATURES.npy --batch-sizes 128 64 --steps N --warmup N
        --num-classes N --device cuda [--path WHEEL ...]

The training step of the reference's trainer (``MVectorTrainer.__train_epoch`` of mvector 1.1.7),
on features precomputed as its data loader delivers them: its backbone from its packaged config
``CONFIG_NAME.yml`` followed by its ``SpeakerIdentification`` head (as ``nn.Sequential``), its loss
(AAMLoss in every packaged config), its optimizer (Adam), fp16 autocast with a GradScaler
(``init_scale=1024``), and its per-step accuracy and loss read-back to the host. Its LR and margin
schedulers are left out (a few scalar operations per step). ``--path`` puts wheels (the reference's
and, where missing, loguru's; pure-Python wheels import from the zip) in front of ``sys.path``, for
an interpreter that has torch but not the reference installed. Prints one JSON line last:
``{batch: {"samples_per_s": ..., "peak_mem_gb": ...}}`` (an ``"error"`` per batch that failed), or
``{"error": ...}``.
"""
import argparse
import json
import sys
import time

REFERENCE_VERSION = "1.1.7"
# Distinct batches cycled through; all on the device, so the step never waits on data.
DISTINCT_BATCHES = 4


def fail(message):
    print(json.dumps({"error": message}))
    sys.exit(0)


def peer_accuracy(logits, labels):
    """``mvector.metric.metrics.accuracy`` of the reference: softmax, host copy, argmax."""
    import numpy as np
    import torch

    output = torch.nn.functional.softmax(logits, dim=-1).data.cpu().numpy()
    return np.mean((np.argmax(output, axis=1) == labels.data.cpu().numpy()).astype(int))


def train_speed(config, features, batch_size, args, device):
    import torch
    from torch import nn
    from mvector import loss as losses
    from mvector import models
    from mvector.models.fc import SpeakerIdentification

    torch.manual_seed(0)
    model_conf, loss_conf, optimizer_conf = config["model_conf"], config["loss_conf"], config["optimizer_conf"]
    # What the reference's build_model / build_loss / build_optimizer do with these config entries.
    backbone = getattr(models, model_conf["model"])(input_size=features.shape[2], **model_conf.get("model_args", {}))
    classifier = SpeakerIdentification(input_dim=backbone.embd_dim,
                                       **dict(model_conf["classifier"], num_speakers=args.num_classes))
    model = nn.Sequential(backbone, classifier).to(device)
    criterion = getattr(losses, loss_conf["loss"])(**loss_conf.get("loss_args", {}))
    optimizer = getattr(torch.optim, optimizer_conf["optimizer"])(params=model.parameters(),
                                                                  **optimizer_conf.get("optimizer_args", {}))
    scaler = torch.GradScaler(device.type, init_scale=1024)
    generator = torch.Generator(device="cpu").manual_seed(batch_size)
    picks = [torch.randint(len(features), (batch_size,), generator=generator).to(device) for _ in range(DISTINCT_BATCHES)]
    labels = [torch.randint(args.num_classes, (batch_size,), generator=generator).to(device)
              for _ in range(DISTINCT_BATCHES)]
    model.train()

    def step(i):
        batch, label = features[picks[i % DISTINCT_BATCHES]], labels[i % DISTINCT_BATCHES].long()
        # The reference's autocast('cuda') is fp16; named here so a CPU smoke run does the same.
        with torch.autocast(device.type, dtype=torch.float16):
            outputs = model(batch)
        logits = outputs["logits"]
        los = criterion(outputs, label)
        scaler.scale(los).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        peer_accuracy(logits, label)
        los.data.cpu().numpy()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    result = {"samples_per_s": batch_size * args.steps / elapsed}
    if cuda:
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config_name")
    parser.add_argument("features")
    parser.add_argument("--batch-sizes", type=int, nargs="+", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--path", action="append", default=[])
    args = parser.parse_args()
    sys.path[:0] = args.path
    try:
        import importlib.resources

        import numpy as np
        import torch
        import yaml
        import mvector
    except Exception as exc:
        fail(f"cannot import torch, numpy, yaml or the reference toolkit: {type(exc).__name__}: {exc}")
    if getattr(mvector, "__version__", None) != REFERENCE_VERSION:
        fail(f"imported mvector {getattr(mvector, '__version__', '?')} from {mvector.__file__}, "
             f"not the reference {REFERENCE_VERSION}")
    try:
        text = (importlib.resources.files("mvector") / "configs" / f"{args.config_name}.yml").read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"the reference has no packaged config {args.config_name}.yml: {exc}")
    config = yaml.safe_load(text)
    device = torch.device(args.device)
    features = torch.from_numpy(np.load(args.features)).to(device)
    results = {}
    for batch_size in args.batch_sizes:
        try:
            results[str(batch_size)] = train_speed(config, features, batch_size, args, device)
        except torch.OutOfMemoryError:
            results[str(batch_size)] = {"error": "out of memory"}
        except Exception as exc:
            results[str(batch_size)] = {"error": f"{type(exc).__name__}: {exc}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
