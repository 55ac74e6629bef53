"""Diarization for people: print, save and draw who spoke when (``infer_diarization.py``), and
score it against a reference (``eval_diarization.py``) with pyannote.metrics, the implementation
of DER that published results use."""
import json
import sys
from pathlib import Path

from mvector.audio import AUDIO_EXTENSIONS, audio_duration
from mvector.errors import ConfigError, MVectorError
from mvector.fileio import atomic_file
from mvector.inference.diarization.rttm import read_rttm, write_rttm
from mvector.lists import read_path_list

# The NIST convention: boundaries within 0.25 s of a reference boundary are not scored (the
# pyannote.metrics collar is the total width, 2 x 0.25 s).
COLLAR = 0.5


def _needs(module: str, extra: str = "diarization"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise MVectorError(f"this needs {module.split('.')[0]}: pip install 'mvector-sv[{extra}]'") from exc


def audio_inputs(audio_paths=(), list_path=None) -> list:
    """The recordings named on a command line and in a file list, in order."""
    paths = [str(p) for p in audio_paths] + (read_path_list(list_path) if list_path else [])
    if not paths:
        raise ConfigError("give at least one recording (AUDIO ... or --list FILE)")
    return paths


def diarize_files(audio_paths=(), list_path=None, *, num_speakers=None, min_speakers=1, max_speakers=None,
                  name_speakers=False, rttm=None, json_path=None, plot=None, model_dir=None, model=None,
                  threshold=None, use_gpu=False, backend="auto", audio_db_path="audio_db/", out=sys.stdout):
    """Diarize each recording; print its segments, and write them as RTTM / JSON / timeline pictures."""
    from mvector.inference.predictor import MVectorPredictor

    paths = audio_inputs(audio_paths, list_path)
    uris = [Path(p).stem for p in paths]
    if len(set(uris)) != len(uris):
        raise ConfigError("two recordings have the same file name; RTTM names a recording by its file name")
    if plot is not None:
        _needs("matplotlib")
    results = {}
    with MVectorPredictor(model_dir=model_dir, model=model, threshold=threshold, use_gpu=use_gpu, backend=backend,
                          audio_db_path=audio_db_path) as predictor:
        for path, uri in zip(paths, uris):
            segments = predictor.diarize(path, num_speakers=num_speakers, min_speakers=min_speakers,
                                         max_speakers=max_speakers, name_speakers=name_speakers,
                                         progress=len(paths) == 1)
            results[uri] = (path, audio_duration(path), segments)
            print(f"{path}: {len({s.speaker for s in segments})} speakers", file=out)
            for start, end, speaker in segments:
                print(f"  {start:9.2f} {end:9.2f}  {speaker}", file=out)
    if rttm is not None:
        write_rttm(rttm, {uri: segments for uri, (_, _, segments) in results.items()})
    if json_path is not None:
        with atomic_file(json_path) as fh:
            json.dump({"recordings": [{"file": path, "uri": uri, "duration": round(duration, 3),
                                       "segments": [s._asdict() for s in segments]}
                                      for uri, (path, duration, segments) in results.items()]},
                      fh, ensure_ascii=False, indent=1)
    if plot is not None:
        for uri, (path, duration, segments) in results.items():
            target = Path(plot) if len(results) == 1 else Path(plot).with_name(f"{Path(plot).stem}-{uri}.png")
            draw_timeline(segments, duration, target, title=path)
    return results


def draw_timeline(segments, duration: float, path, title: str = "") -> Path:
    """A picture of who spoke when: one row per speaker, a bar per segment."""
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    from matplotlib import pyplot as plt

    speakers = list(dict.fromkeys(s.speaker for s in segments))
    figure, axes = plt.subplots(figsize=(min(30.0, 4.0 + duration / 10.0), 0.8 + 0.5 * max(1, len(speakers))))
    colours = plt.get_cmap("tab10")
    for row, speaker in enumerate(speakers):
        spans = [(s.start, s.end - s.start) for s in segments if s.speaker == speaker]
        axes.broken_barh(spans, (row - 0.4, 0.8), color=colours(row % 10))
    axes.set_yticks(range(len(speakers)), speakers)
    axes.set_ylim(-0.6, max(1, len(speakers)) - 0.4)
    axes.set_xlim(0, duration)
    axes.set_xlabel("seconds")
    axes.invert_yaxis()
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        figure.savefig(fh, format="png", dpi=100)
    plt.close(figure)
    return path


def find_recordings(audio_dir, uris) -> dict:
    """``{uri: audio file}`` in ``audio_dir`` for each RTTM file name; ConfigError naming any missing."""
    folder = Path(audio_dir)
    if not folder.is_dir():
        raise ConfigError(f"audio folder {audio_dir} does not exist")
    found = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS}
    missing = [uri for uri in uris if uri not in found]
    if missing:
        raise ConfigError(f"{audio_dir}: no recording for {len(missing)} file(s) of the reference, e.g. "
                          f"{', '.join(missing[:3])} (looked for {'/'.join(AUDIO_EXTENSIONS)})")
    return {uri: found[uri] for uri in uris}


def _annotation(uri, segments):
    from pyannote.core import Annotation, Segment
    annotation = Annotation(uri=uri)
    for start, end, speaker in segments:
        if end > start:
            annotation[Segment(start, end), len(annotation)] = speaker
    return annotation


def score_diarization(references: dict, hypotheses: dict, durations: dict, collar: float = COLLAR) -> dict:
    """DER with overlapped speech scored and without, per recording and pooled, each recording scored
    over its whole length: ``{'files': {uri: row}, 'pooled': row}``, a row holding ``der``, ``miss``,
    ``false_alarm``, ``confusion`` (shares of the reference speech), ``der_no_overlap`` and the
    reference speech in seconds (``total``)."""
    metrics = _needs("pyannote.metrics.diarization")
    core = _needs("pyannote.core")
    with_overlap = metrics.DiarizationErrorRate(collar=collar)
    without_overlap = metrics.DiarizationErrorRate(collar=collar, skip_overlap=True)
    rows = {}
    for uri, reference in references.items():
        uem = core.Timeline([core.Segment(0.0, durations[uri])], uri=uri)
        ref, hyp = _annotation(uri, reference), _annotation(uri, hypotheses.get(uri, []))
        parts = with_overlap(ref, hyp, uem=uem, detailed=True)
        rows[uri] = _row(parts, without_overlap(ref, hyp, uem=uem))
    return {"files": rows, "pooled": _row(_pooled_components(with_overlap), abs(without_overlap))}


def _pooled_components(metric) -> dict:
    totals = {}
    for _, components in metric.results_:
        for name, value in components.items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def _row(parts, der_no_overlap) -> dict:
    total = parts["total"]
    share = (lambda name: parts[name] / total) if total else (lambda name: 0.0)
    miss, false_alarm, confusion = share("missed detection"), share("false alarm"), share("confusion")
    return {"der": miss + false_alarm + confusion, "miss": miss, "false_alarm": false_alarm,
            "confusion": confusion, "der_no_overlap": float(der_no_overlap), "total": total}


def evaluate_diarization(audio_dir, rttm, *, num_speakers=None, oracle_speakers=False, hypothesis_rttm=None,
                         collar=COLLAR, model_dir=None, model=None, use_gpu=False, backend="auto", diarizer=None,
                         out=sys.stdout) -> dict:
    """Diarize every recording the reference RTTM names (found in ``audio_dir``), print DER per
    recording and pooled, and return ``score_diarization``'s figures."""
    from mvector.inference.predictor import MVectorPredictor

    _needs("pyannote.metrics")
    references = read_rttm(rttm)
    recordings = find_recordings(audio_dir, sorted(references))
    hypotheses, durations = {}, {}
    with MVectorPredictor(model_dir=model_dir, model=model, use_gpu=use_gpu, backend=backend) as predictor:
        for uri, path in recordings.items():
            count = len({s for _, _, s in references[uri]}) if oracle_speakers else num_speakers
            hypotheses[uri] = predictor.diarize(path, num_speakers=count, diarizer=diarizer)
            durations[uri] = audio_duration(path)
    if hypothesis_rttm is not None:
        write_rttm(hypothesis_rttm, hypotheses)
    figures = score_diarization(references, hypotheses, durations, collar)
    print(f"reference: {rttm} ({len(references)} recordings); collar ±{collar / 2:g} s", file=out)
    print(f"{'file':<16}{'spk ref/hyp':>12}{'DER':>8}{'miss':>8}{'FA':>8}{'conf':>8}{'DER no-ovl':>12}", file=out)
    for uri, row in figures["files"].items():
        counts = f"{len({s for *_, s in references[uri]})}/{len({s.speaker for s in hypotheses[uri]})}"
        print(f"{uri:<16}{counts:>12}{_line(row)}", file=out)
    print(f"{'pooled':<16}{'':>12}{_line(figures['pooled'])}", file=out)
    return figures


def _line(row) -> str:
    return "".join(f"{100 * row[k]:7.1f}%" for k in ("der", "miss", "false_alarm", "confusion")) + \
        f"{100 * row['der_no_overlap']:11.1f}%"
