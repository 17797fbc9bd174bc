"""A multi-rank save to GCS (a gcp-storage-emulator on 127.0.0.1, started here) and a resharded restore from it.

Each rank uploads its own data object; rank 0 puts the index object last. The emulator helpers of
tests/cloud/conftest.py start and stop the server (as test_distributed_s3.py does with moto).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from dist_harness import run_world

# As tests/cloud/conftest.py: gcsfs reads it when imported, and probes the bucket type over gRPC first
# otherwise, which stalls ~60 s per bucket against an emulator (the ranks inherit it)
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is needed")
pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")

_CONFTEST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "cloud", "conftest.py")


def _cloud_helpers():
    spec = importlib.util.spec_from_file_location("ckptcore_cloud_conftest", _CONFTEST)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gcs_bucket(tmp_path_factory):
    helpers = _cloud_helpers()
    port = helpers._free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = helpers._start([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port",
                           str(port), "--in-memory"], endpoint + "/", helpers._server_env(),
                          tmp_path_factory.mktemp("gcs") / "gcs.log")
    try:
        store = helpers._gcs_store(endpoint)
        yield store.bucket, store.storage_options
    finally:
        helpers._stop(proc)


@pytest.mark.slow
def test_multi_rank_save_to_gcs_and_resharded_restore(gcs_bucket, tmp_path):
    import ckptcore as ck

    bucket, options = gcs_bucket
    root = f"gs://{bucket}/run"
    saved = run_world(2, "dtensor_layouts", str(tmp_path), root=root, save="0", load=["0"], write=True,
                      storage_options=options)
    assert saved == [{"0": True}] * 2
    reader = ck.load_checkpoint(f"{root}/layout/c-0", storage_options=options)
    assert reader.index.num_shards == 2  # one data object per rank
    # one data object per rank, both named with the save attempt's data tag (the index records it)
    tag = reader.index.data_tag
    assert tag is not None and sorted(n.rsplit("/", 1)[-1] for n in reader.storage.listdir(f"{bucket}/run/layout")) == \
        [f"c-0.data-00000-of-00002.{tag}", f"c-0.data-00001-of-00002.{tag}", "c-0.index"]
    got = reader.get_tensor("t/.ATTRIBUTES/VARIABLE_VALUE")
    assert got.tolist() == torch.arange(60, dtype=torch.float32).reshape(6, 10).tolist()
    # 2 -> 3 ranks, Shard(0) -> Shard(1) and replicated, each rank reading its byte ranges from GCS
    assert run_world(3, "dtensor_layouts", str(tmp_path), root=root, save="0", load=["1", "r"],
                     storage_options=options) == [{"1": True, "r": True}] * 3
