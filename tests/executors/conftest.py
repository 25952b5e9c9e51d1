"""The local Ray instance the executor tests share (one per module)."""

from __future__ import annotations

import logging
import os

import pytest

from tests.conftest import missing


@pytest.fixture(scope="module")
def cluster():
    try:
        import ray
    except ImportError:
        missing("Ray is not installed (pip install 'cai-pipeline[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2,
             logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
