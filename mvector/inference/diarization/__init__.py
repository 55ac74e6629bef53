"""Speaker diarization (who spoke when) with any model directory: ``MVectorPredictor.diarize``."""
from mvector.inference.diarization.clustering import SpeakerClustering
from mvector.inference.diarization.pipeline import Diarizer, Segment
from mvector.inference.diarization.speech import SileroSpeechDetector, SpeechDetector

__all__ = ["Diarizer", "Segment", "SileroSpeechDetector", "SpeakerClustering", "SpeechDetector"]
