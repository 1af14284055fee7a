"""The storage edge: URLs, metadata and round trips, each checked by an independent reader."""

import base64
import functools
import http.server
import json
import pickle
import threading
import time

import numpy as np
import pytest
import tensorstore as ts
import zarr
from cloudvolume import CloudVolume

from pipeline.errors import VolumeError
from pipeline.urls import parse_volume_url, redact, scrub
from pipeline.volumes import create_volume, open_volume, write_array

EVERYTHING = (slice(None), slice(None), slice(None))


def ramp(shape, dtype="uint8"):
    """A volume whose every voxel differs from its neighbours, so any misplacement shows."""
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    if np.dtype(dtype).kind == "f":
        return (values / 7.0).astype(dtype)
    return (values % np.iinfo(dtype).max).astype(dtype)


def read_with_cloudvolume(path):
    """CloudVolume gives (x, y, z, channel); bring it to our (z, y, x)."""
    volume = CloudVolume(f"file://{path}", mip=0, progress=False)
    return volume, np.asarray(volume[:, :, :])[..., 0].transpose(2, 1, 0)


def local(path):
    return {"driver": "file", "path": path}


def bucket(driver, name, path):
    return {"driver": driver, "bucket": name, "path": path}


@pytest.mark.parametrize(
    ("url", "fmt", "kvstore"),
    [
        ("zarr3:///data/a.zarr", "zarr3", local("/data/a.zarr/")),
        ("zarr3://file:///data/a.zarr/", "zarr3", local("/data/a.zarr/")),
        ("/data/a.zarr", "zarr3", local("/data/a.zarr/")),
        ("zarr://gs://lab-em/a/b.zarr", "zarr", bucket("gcs", "lab-em", "a/b.zarr/")),
        ("zarr2://s3://lab-em/a", "zarr", bucket("s3", "lab-em", "a/")),
        ("precomputed://s3://lab-em/em", "precomputed", bucket("s3", "lab-em", "em/")),
        (
            "precomputed://https://host.org/data/em",
            "precomputed",
            {"driver": "http", "base_url": "https://host.org", "path": "/data/em/"},
        ),
        ("gs://lab-em/x.zarr|zarr3:", "zarr3", bucket("gcs", "lab-em", "x.zarr/")),
        ("gs://lab-em/x|neuroglancer-precomputed:", "precomputed", bucket("gcs", "lab-em", "x/")),
    ],
)
def test_url_forms_map_to_format_and_kvstore(url, fmt, kvstore):
    source = parse_volume_url(url)
    location = {key: value for key, value in source.kvstore.items() if key != "context"}
    assert (source.format, location) == (fmt, kvstore)


def test_an_unreachable_host_fails_in_seconds_with_one_line():
    started = time.monotonic()
    with pytest.raises(VolumeError, match=r"^cannot open http://127\.0\.0\.1:9/x\.zarr: .*") as e:
        open_volume("http://127.0.0.1:9/x.zarr")
    assert time.monotonic() - started < 60 and "\n" not in str(e.value)


def test_bare_relative_zarr_path_becomes_absolute_and_may_be_zarr2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = parse_volume_url("scans/hr.zarr")
    assert source.kvstore == {"driver": "file", "path": f"{tmp_path}/scans/hr.zarr/"}
    assert source.detect_zarr_version


@pytest.mark.parametrize(
    "url", ["tiff:///data/a", "zarr3://ftp://host/a", "/data/volume", "gs://b/x|tiff:", "zarr3://"]
)
def test_unknown_url_form_is_refused_with_the_accepted_forms(url):
    with pytest.raises(VolumeError, match="unknown volume URL") as error:
        parse_volume_url(url)
    message = str(error.value)
    assert "\n" not in message
    assert all(form in message for form in ("zarr3://", "precomputed://", "gs://", ".zarr"))


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("zarr3://s3://AKIAKEY:se/cr@et@bucket/x.zarr", "se/cr@et"),
        ("precomputed://https://alice:pa55word@host.org/em", "pa55word"),
    ],
)
def test_redact_hides_credentials_but_keeps_the_location(url, secret):
    shown = redact(url)
    assert secret not in shown and "***@" in shown
    assert shown.endswith(url.rpartition("@")[2])


def test_s3_credentials_in_url_are_refused_without_showing_them():
    with pytest.raises(VolumeError) as error:
        parse_volume_url("zarr3://s3://AKIAKEY:wJalr/XUtn@lab-em/a.zarr")
    assert "wJalr" not in str(error.value) and "AKIAKEY" not in str(error.value)


@pytest.fixture
def served(tmp_path):
    """tmp_path served over HTTP on localhost (the server ignores credentials)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


def test_http_credentials_become_a_header_and_never_reach_errors(tmp_path, served):
    write_array(str(tmp_path / "a.zarr"), ramp((2, 8, 8)), (50.0, 4.0, 4.0))
    group = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    group["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"] = "absent"
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text(json.dumps(group))
    base = f"http://alice:s3cret@{served}"
    token = base64.b64encode(b"alice:s3cret").decode()
    shown = repr(parse_volume_url(f"zarr3://{base}/a.zarr"))
    assert "s3cret" not in shown and token not in shown
    volume = open_volume(f"zarr3://{base}/a.zarr")
    np.testing.assert_array_equal(volume.read(EVERYTHING), ramp((2, 8, 8)))
    for name, expected in (("missing.zarr", "no volume at"), ("broken.zarr", "NOT_FOUND")):
        with pytest.raises(VolumeError, match=expected) as error:
            open_volume(f"zarr3://{base}/{name}")
        message = str(error.value)
        assert "s3cret" not in message and token not in message and "alice" not in message


def test_scrub_keeps_tensorstores_reason_but_not_its_spec_dump():
    message = 'NOT_FOUND: gone [tensorstore_spec=\'{"headers":["Authorization: Basic eA=="]}\']'
    assert scrub(message) == "NOT_FOUND: gone"
    assert scrub("denied for key AKIA\nmore", ("AKIA",)) == "denied for key ***"


def test_zarr3_round_trip_is_ome_zarr_that_zarr_python_reads(tmp_path):
    data = ramp((3, 40, 50))
    url = str(tmp_path / "hr.zarr")
    written = create_volume(
        url, data.shape, "uint8", (50.0, 7.5, 7.5), (1, 16, 32), attributes={"checkpoint": "abc"}
    )
    written.write(EVERYTHING, data)
    group = zarr.open_group(url, mode="r")
    np.testing.assert_array_equal(group["0"][...], data)
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert group.attrs["ome"]["version"] == "0.5"
    assert [axis["unit"] for axis in multiscale["axes"]] == ["nanometer"] * 3
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [50.0, 7.5, 7.5]
    reopened = open_volume(url)
    assert reopened.info.voxel_size_nm == (50.0, 7.5, 7.5) and reopened.info.voxel_size_known
    assert (reopened.info.chunk, reopened.info.read_chunk) == ((1, 16, 32), (1, 16, 32))
    assert reopened.read_attributes() == {"checkpoint": "abc"}
    np.testing.assert_array_equal(
        reopened.read((slice(1, 3), slice(5, 20), slice(0, 50))), data[1:3, 5:20]
    )


def test_sharded_zarr3_writes_shards_and_reads_inner_chunks(tmp_path):
    data = ramp((4, 64, 64), "uint16")
    url = f"zarr3://{tmp_path}/sharded.zarr"
    volume = create_volume(
        url, data.shape, "uint16", (40.0, 8.0, 8.0), (1, 16, 16), shard=(2, 32, 64)
    )
    assert (volume.info.chunk, volume.info.read_chunk) == ((2, 32, 64), (1, 16, 16))
    for z in (0, 2):
        volume.write((slice(z, z + 2), slice(0, 32), slice(0, 64)), data[z : z + 2, :32])
        volume.write((slice(z, z + 2), slice(32, 64), slice(0, 64)), data[z : z + 2, 32:])
    array = zarr.open_group(str(tmp_path / "sharded.zarr"), mode="r")["0"]
    assert array.shards == (2, 32, 64) and array.chunks == (1, 16, 16)
    np.testing.assert_array_equal(array[...], data)


@pytest.mark.parametrize("shard", [None, (2, 64, 128)])
def test_precomputed_round_trip_reads_back_in_cloudvolume(tmp_path, shard):
    data = ramp((5, 100, 140))
    volume = create_volume(
        f"precomputed://file://{tmp_path}/em",
        data.shape,
        "uint8",
        (50.0, 15.0, 15.0),
        (1, 32, 64),
        shard=shard,
        attributes={"input": "x"},
    )
    assert volume.info.chunk == (shard or (1, 32, 64))
    volume.write(EVERYTHING, data)
    cloud, read_back = read_with_cloudvolume(tmp_path / "em")
    np.testing.assert_array_equal(read_back, data)
    assert list(cloud.resolution) == [15, 15, 50] and list(cloud.voxel_offset) == [0, 0, 0]
    info = json.loads((tmp_path / "em" / "info").read_text())
    assert info["emsr"] == {"input": "x"} and info["scales"][0]["key"] == "15_15_50"
    assert ("sharding" in info["scales"][0]) == (shard is not None)


@pytest.mark.parametrize(
    ("shape", "chunk", "shard"),
    [
        ((5, 300, 200), (1, 64, 64), (2, 128, 256)),
        ((40, 512, 512), (1, 64, 64), (8, 512, 512)),
        ((3, 1000, 1000), (1, 128, 128), (1, 256, 256)),
        ((2, 64, 64), (1, 64, 64), (8, 64, 64)),
    ],
)
def test_precomputed_shard_is_the_write_unit_tensorstore_reports(tmp_path, shape, chunk, shard):
    volume = create_volume(
        f"precomputed://{tmp_path}/em", shape, "uint8", (30.0, 4.0, 4.0), chunk, shard=shard
    )
    reported = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": f"{tmp_path}/em/"},
        }
    ).result()
    assert volume.info.chunk == tuple(reported.chunk_layout.write_chunk.shape[2::-1])
    clipped = zip(volume.info.chunk, shard, shape, strict=True)
    assert all(c == s or s > c >= n for c, s, n in clipped)


def test_precomputed_shard_that_is_not_a_box_of_chunks_names_one_that_is(tmp_path):
    with pytest.raises(VolumeError, match=r"Morton-aligned .* use e\.g\. shard \(1, 128, 128\)"):
        create_volume(
            f"precomputed://{tmp_path}/em",
            (40, 512, 512),
            "uint8",
            (30.0, 4.0, 4.0),
            (1, 64, 64),
            shard=(4, 64, 64),
        )
    assert not (tmp_path / "em").exists()


@pytest.mark.parametrize("fmt", ["zarr3", "precomputed"])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_uint16_and_float32_round_trip_exactly(tmp_path, fmt, dtype):
    data = ramp((2, 30, 20), dtype)
    volume = write_array(f"{fmt}://{tmp_path}/v", data, (50.0, 5.0, 5.0))
    assert open_volume(f"{fmt}://{tmp_path}/v").info.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(volume.read(EVERYTHING), data)


def test_precomputed_voxel_offset_is_reported_and_reads_stay_zero_based(tmp_path):
    data = ramp((4, 64, 96))
    info = CloudVolume.create_new_info(
        num_channels=1,
        layer_type="image",
        data_type="uint8",
        encoding="raw",
        resolution=[8, 8, 40],
        voxel_offset=[100, 200, 7],
        chunk_size=[32, 32, 1],
        volume_size=[96, 64, 4],
    )
    cloud = CloudVolume(f"file://{tmp_path}/em", info=info, compress=False, progress=False)
    cloud.commit_info()
    cloud[100:196, 200:264, 7:11] = data.transpose(2, 1, 0)[..., np.newaxis]
    volume = open_volume(f"precomputed://{tmp_path}/em")
    assert volume.info.offset == (7, 200, 100) and volume.info.shape == (4, 64, 96)
    assert volume.info.voxel_size_nm == (40.0, 8.0, 8.0)
    np.testing.assert_array_equal(
        volume.read((slice(1, 3), slice(0, 32), slice(32, 96))), data[1:3, 0:32, 32:96]
    )


def test_zarr2_group_with_ome_04_micrometres_gives_nanometres(tmp_path):
    path = tmp_path / "old.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("s0", data=ramp((2, 16, 16)), chunks=(1, 16, 16))
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    transform = [{"type": "scale", "scale": [0.05, 0.004, 0.004]}]
    dataset = {"path": "s0", "coordinateTransformations": transform}
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [dataset]}]
    volume = open_volume(str(path))
    assert volume.info.format == "zarr"
    assert np.allclose(volume.info.voxel_size_nm, (50.0, 4.0, 4.0))
    np.testing.assert_array_equal(volume.read(EVERYTHING), ramp((2, 16, 16)))


def test_plain_zarr3_array_has_unknown_voxel_size(tmp_path):
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(2, 8, 8), dtype="uint8")
    info = open_volume(str(tmp_path / "plain.zarr")).info
    assert info.voxel_size_nm == (1.0, 1.0, 1.0) and not info.voxel_size_known


@pytest.mark.parametrize("shape", [(8, 8), (1, 2, 8, 8)])
def test_volume_of_wrong_rank_is_refused_naming_the_rank(tmp_path, shape):
    zarr.create_array(str(tmp_path / "bad.zarr"), shape=shape, dtype="uint8")
    with pytest.raises(VolumeError, match=f"rank {len(shape)}"):
        open_volume(str(tmp_path / "bad.zarr"))


def test_precomputed_with_two_channels_is_refused(tmp_path):
    info = CloudVolume.create_new_info(
        2, "image", "uint8", "raw", [8, 8, 40], [0, 0, 0], [16, 16, 2], chunk_size=[16, 16, 1]
    )
    CloudVolume(f"file://{tmp_path}/em", info=info).commit_info()
    with pytest.raises(VolumeError, match="2 channels"):
        open_volume(f"precomputed://{tmp_path}/em")


def test_unsupported_dtype_is_refused_on_open_and_on_create(tmp_path):
    zarr.create_array(str(tmp_path / "int.zarr"), shape=(2, 8, 8), dtype="int32")
    with pytest.raises(VolumeError, match="dtype int32"):
        open_volume(str(tmp_path / "int.zarr"))
    with pytest.raises(VolumeError, match="dtype float64"):
        create_volume(str(tmp_path / "new.zarr"), (2, 8, 8), "float64", (1.0, 1.0, 1.0), (1, 8, 8))
    assert not (tmp_path / "new.zarr").exists()


@pytest.mark.parametrize("prefix", ["", "zarr3://", "precomputed://", "zarr://"])
def test_missing_store_says_no_volume(tmp_path, prefix):
    with pytest.raises(VolumeError, match=r"no volume at .*: check the path/URL"):
        open_volume(f"{prefix}{tmp_path}/absent.zarr")


def test_existing_output_with_other_metadata_is_refused_and_matching_one_reopened(tmp_path):
    url = str(tmp_path / "out.zarr")
    first = write_array(url, ramp((2, 16, 16)), (50.0, 4.0, 4.0), chunk=(1, 16, 16))
    differs = r"shape \(2, 16, 16\) \(wanted \(3, 16, 16\)\).*--overwrite"
    with pytest.raises(VolumeError, match=differs):
        create_volume(url, (3, 16, 16), "uint8", (50.0, 4.0, 4.0), (1, 16, 16))
    with pytest.raises(VolumeError, match=r"voxel size .*dtype|dtype .*voxel size"):
        create_volume(url, (2, 16, 16), "uint16", (50.0, 2.0, 2.0), (1, 16, 16))
    again = create_volume(url, (2, 16, 16), "uint8", (50.0, 4.0, 4.0), (1, 16, 16))
    np.testing.assert_array_equal(again.read(EVERYTHING), first.read(EVERYTHING))
    replaced = create_volume(
        url, (3, 16, 16), "uint8", (50.0, 4.0, 4.0), (1, 16, 16), overwrite=True
    )
    assert replaced.info.shape == (3, 16, 16) and not replaced.read(EVERYTHING).any()


@pytest.mark.parametrize("prefix", ["", "precomputed://"])
def test_unwritable_output_is_refused_in_one_line_and_nothing_written(tmp_path, prefix):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(VolumeError, match=r"cannot create .*writable") as error:
        create_volume(f"{prefix}{blocker}/out.zarr", (2, 8, 8), "uint8", (1.0, 1.0, 1.0), (1, 8, 8))
    assert "\n" not in str(error.value)
    assert blocker.read_text() == "not a directory" and list(tmp_path.iterdir()) == [blocker]


def test_write_that_cuts_a_chunk_is_refused_but_edge_chunks_may_be_partial(tmp_path):
    volume = create_volume(
        str(tmp_path / "v.zarr"), (2, 40, 40), "uint8", (1.0, 1.0, 1.0), (1, 16, 16)
    )
    with pytest.raises(VolumeError, match=r"cuts its write chunks \(1, 16, 16\) along y"):
        volume.write((slice(0, 1), slice(8, 24), slice(0, 16)), np.ones((1, 16, 16), np.uint8))
    volume.write((slice(0, 1), slice(32, 40), slice(32, 40)), np.ones((1, 8, 8), np.uint8))
    assert volume.read(EVERYTHING).sum() == 64


def test_box_outside_the_volume_is_refused(tmp_path):
    volume = write_array(str(tmp_path / "v.zarr"), ramp((2, 8, 8)), (1.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match="outside"):
        volume.read((slice(0, 3), slice(0, 8), slice(0, 8)))


def test_async_io_returns_futures_that_overlap(tmp_path):
    volume = create_volume(
        str(tmp_path / "v.zarr"), (4, 16, 16), "uint8", (1.0, 1.0, 1.0), (1, 16, 16)
    )
    writes = [
        volume.write_async(
            (slice(z, z + 1), slice(0, 16), slice(0, 16)), np.full((1, 16, 16), z, np.uint8)
        )
        for z in range(4)
    ]
    for pending in writes:
        pending.commit.result()
    reads = [volume.read_async((slice(z, z + 1), slice(None), slice(None))) for z in range(4)]
    assert [int(r.result().max()) for r in reads] == [0, 1, 2, 3]


def test_attributes_merge_and_survive_pickling_to_a_worker(tmp_path):
    volume = create_volume(
        f"precomputed://{tmp_path}/em",
        (2, 8, 8),
        "uint8",
        (1.0, 1.0, 1.0),
        (1, 8, 8),
        attributes={"input": "a"},
    )
    assert volume.update_attributes({"checkpoint_sha256": "f00"}) == {
        "input": "a",
        "checkpoint_sha256": "f00",
    }
    worker_copy = pickle.loads(pickle.dumps(volume))
    worker_copy.write(EVERYTHING, np.full((2, 8, 8), 9, np.uint8))
    assert worker_copy.read_attributes()["checkpoint_sha256"] == "f00"
    assert CloudVolume(f"file://{tmp_path}/em", progress=False)[:, :, :].min() == 9
