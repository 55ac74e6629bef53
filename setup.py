from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}


def requirements(name):
    return [line.strip() for line in (here / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


exec((here / "mvector" / "__init__.py").read_text(encoding="utf-8"), version)

setup(
    # Not "mvector": that name on the package index is the reference toolkit's (VoiceprintRecognition-
    # Pytorch), so `pip install -U mvector` would replace this package with it. The import name stays mvector.
    name="mvector-sv",
    version=version["__version__"],
    description="Speaker verification (voiceprint recognition) for PyTorch: features, backbones, "
                "training, evaluation and a durable voiceprint library",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mvector", "mvector.*"]),
    package_data={"mvector": ["pretrained/*/*", "apps/server/static/*"]},
    install_requires=requirements("requirements.txt"),
    extras_require={
        "test": requirements("requirements-test.txt"),
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # Exporting for OpenVINO (and int8 quantization) writes and checks the ONNX graph with these.
        "openvino": ["onnx", "onnxscript", "onnxruntime"],
        "server": ["fastapi", "uvicorn", "python-multipart"],
        # Speaker diarization: clustering, speech detection, DER scoring and timeline pictures.
        "diarization": ["scikit-learn", "silero-vad", "pyannote.metrics", "matplotlib"],
        # The voiceprint library on PostgreSQL (several server replicas).
        "postgres": ["psycopg[binary,pool]"],
        # Self-supervised front-ends (WavLM, wav2vec 2.0, HuBERT, w2v-BERT 2.0): preprocess_conf HFModel.
        "hf": ["transformers>=4.37"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
