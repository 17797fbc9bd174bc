"""A multi-rank save to S3 (a moto server on 127.0.0.1, started here) and a resharded restore from it.

Each rank uploads its own data object; rank 0 puts the index object last. The moto helpers of
tests/cloud/conftest.py start and stop the server.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid

import pytest
import torch
from dist_harness import run_world

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is needed")
pytest.importorskip("moto")
pytest.importorskip("s3fs")

_CONFTEST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "cloud", "conftest.py")


def _cloud_helpers():
    spec = importlib.util.spec_from_file_location("ckptcore_cloud_conftest", _CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def s3_bucket(tmp_path_factory):
    helpers = _cloud_helpers()
    port = helpers._free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = helpers._start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], endpoint + "/",
                          helpers._server_env(), tmp_path_factory.mktemp("moto") / "moto.log")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs

        # an instance of its own: fsspec's cached one may point at another server of this session
        s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket := f"b-{uuid.uuid4().hex[:16]}")
        try:
            yield bucket, endpoint
        finally:
            helpers._stop(proc)


@pytest.mark.slow
def test_multi_rank_save_to_s3_and_resharded_restore(s3_bucket, tmp_path):
    import ckptcore as ck

    bucket, endpoint = s3_bucket
    root = f"s3://{bucket}/run"
    saved = run_world(2, "dtensor_layouts", str(tmp_path), root=root, save="0", load=["0"], write=True)
    assert saved == [{"0": True}] * 2
    reader = ck.load_checkpoint(f"{root}/layout/c-0", storage_options={"endpoint_url": endpoint})
    assert reader.index.num_shards == 2  # one data object per rank
    got = reader.get_tensor("t/.ATTRIBUTES/VARIABLE_VALUE")
    assert got.tolist() == torch.arange(60, dtype=torch.float32).reshape(6, 10).tolist()
    # 2 -> 3 ranks, Shard(0) -> Shard(1) and replicated, each rank reading its byte ranges from S3
    assert run_world(3, "dtensor_layouts", str(tmp_path), root=root, save="0", load=["1", "r"]) == \
        [{"1": True, "r": True}] * 3
