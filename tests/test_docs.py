"""What the documentation promises about files matches what the code writes."""
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mvector.training.corpus import create_data_lists

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_the_dataset_readme_names_exactly_the_files_create_data_writes(tmp_path):
    for split in ("train", "dev"):
        for speaker in ("a", "b"):
            for index in range(2):
                path = tmp_path / "corpus" / split / speaker / f"{index}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                noise = np.random.default_rng(index).standard_normal(8000).astype(np.float32)
                sf.write(path, 0.1 * noise, 16000)
    report = create_data_lists(tmp_path / "corpus", tmp_path / "lists", layout="folders", train_dir="train",
                               dev_dir="dev")
    written = {Path(f).name for f in report.files}
    named = set(re.findall(r"`([a-z_]+\.(?:txt|tsv|json))`", (ROOT / "dataset" / "README.md").read_text()))
    assert named == written
