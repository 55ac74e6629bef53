"""What the inference wing agrees on with the files it writes and reads back: the exported graph's
file and tensor names, the metadata key naming the model it came from, the converted model's file,
and the shortest recording a model is given (what exported graphs are traced for)."""

ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"  # written by mvector.inference.quantize
# The file of each graph part (mvector.inference.export.GRAPH_PARTS) converted for OpenVINO, in the cache folder.
CONVERTED_FILES = {"embedder": "model.xml", "features": "features.xml", "backbone": "backbone.xml"}
INPUT_NAMES = ("waveforms", "lengths")
OUTPUT_NAME = "embeddings"
# Metadata key of an exported graph: the fingerprint of the model directory it was exported from.
FINGERPRINT_KEY = "mvector_fingerprint"
# Shorter audio carries too little of a voice for a usable embedding (and is below what the
# exported graphs are traced for).
MIN_DURATION = 0.3
