"""Shared fixtures. Tests that use the session's Ray cluster are marked ``ray`` and
``slow`` here; other slow modules say so with ``pytestmark``. ``pytest -m "not slow"``
runs the fast suite."""

import numpy as np
import pytest

from gblend_ray.data.arrays import save_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Two modalities, 4 classes, 240 samples: 'video' informative, 'audio' noisy and wide."""
    rng = np.random.default_rng(0)
    n, c = 240, 4
    labels = np.arange(n) % c
    video = rng.standard_normal((c, 6))[labels] * 2 + rng.standard_normal((n, 6))
    audio = rng.standard_normal((c, 32))[labels] * 0.3 + rng.standard_normal((n, 32))
    split = np.array(["train"] * 160 + ["val"] * 20 + ["test"] * 60)
    path = tmp_path_factory.mktemp("tiny") / "ds"
    return save_dataset(path, {"video": video, "audio": audio}, labels, [f"c{i}" for i in range(c)], split=split)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (starting one costs seconds).
    Logical CPUs exceed the machine's cores so trainer workers and probe trials fit."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Single-node clusters in local-only mode: Ray then binds to 127.0.0.1, not the machine's
    # interface address (inherited by the `gblend` processes tests start).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # The cluster's processes read object storage with the credentials of their node's
    # environment: the loopback S3 server of tests/distributed/test_object_storage.py takes any.
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
        os.environ.setdefault(key, value)
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def av_overfit(tmp_path_factory):
    from gblend_ray.data.synthetic import generate_preset

    return generate_preset("av-overfit", tmp_path_factory.mktemp("av") / "av-overfit", seed=0)


def pytest_collection_modifyitems(items):
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)
