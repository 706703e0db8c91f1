"""Fixtures of the training-side tests: a tiny BERT checkpoint and one full recipe run on it (session-wide:
the pipeline and integer-encoder tests read the same artifact)."""

import pytest

from sw import glue
from sw.pipeline import run
from sw.tiny import make_tiny_checkpoint
from tests.sw.tiny_run import GLUE, tiny_config


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    examples = glue.load_glue_split(GLUE, "mrpc", "train", limit=300)
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), [e.text_a for e in examples] + [e.text_b for e in examples])


@pytest.fixture(scope="session")
def result(checkpoint, tmp_path_factory):
    return run(tiny_config(checkpoint, tmp_path_factory.mktemp("run")))
