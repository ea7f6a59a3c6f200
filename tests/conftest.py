import json
import os

import pytest

# Parallel test workers share two cores: one torch thread each keeps them from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def demo_file(tmp_path):
    """A small, learnable demonstration set: answers follow a fixed pattern of the prompt."""
    words = ["apple", "river", "stone", "cloud", "maple", "ember", "frost", "grain", "harbor", "island", "jade", "kettle"]
    path = tmp_path / "demos.jsonl"
    with open(path, "w") as f:
        for w in words * 2:
            f.write(json.dumps({"prompt": f"Spell {w}", "completion": " ".join(w.upper())}) + "\n")
    return path
