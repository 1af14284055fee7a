"""Inputs as labs have them: offsets and translations, gzip and JPEG precomputed, N5, Zarr
without a voxel size; and OME-Zarr outputs that readers take without a complaint.

Each is run through the pipeline (`super_resolve` on the session's Dask cluster) and checked
with an independent reader (CloudVolume, zarr-python)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr
from cloudvolume import CloudVolume

from pipeline.errors import PlanError, VolumeError
from pipeline.geometry import Box
from pipeline.pairs import PairRequest, extract_pairs
from pipeline.superresolve import SuperResolveRequest, output_roi, super_resolve
from pipeline.volumes import create_volume, open_volume, write_array
from pipeline.world import WorldBox, parse_voxel_size

ALL = (slice(None),) * 3
OFFSET_XYZ = (64, 32, 3)


def run(input_url: str, output: str, checkpoint: Path, cluster: str, **options) -> np.ndarray:
    options = {"chunk": (1, 32, 32), "block": (2, 64, 64), "tile": 32, "device": "cpu", **options}
    super_resolve(
        SuperResolveRequest(input_url, output, str(checkpoint), cluster=cluster, **options)
    )
    return open_volume(output).read(ALL)


def cloudvolume_input(path: Path, lr: np.ndarray, voxel_nm, *, encoding="raw", **write) -> str:
    """`lr` as CloudVolume writes it (x, y, z on disk) at voxel offset `OFFSET_XYZ`."""
    info = CloudVolume.create_new_info(
        1, "image", "uint8", encoding, [int(v) for v in voxel_nm[::-1]], list(OFFSET_XYZ),
        list(lr.shape[::-1]), chunk_size=[32, 32, 1],
    )  # fmt: skip
    cloud = CloudVolume(f"file://{path}", info=info, progress=False, **write)
    cloud.commit_info()
    x, y, z = OFFSET_XYZ
    cloud[x : x + lr.shape[2], y : y + lr.shape[1], z : z + lr.shape[0]] = lr.T[..., None]
    return f"precomputed://file://{path}"


def as_cloudvolume_reads(path: Path) -> np.ndarray:
    cloud = CloudVolume(f"file://{path}", mip=0, progress=False, fill_missing=True)
    return np.asarray(cloud[:, :, :])[..., 0].T


@pytest.fixture
def lr(phantom) -> np.ndarray:
    """Two LR sections: enough for every format's path, small enough to run many times."""
    return phantom.lr[:2]


def world_corner(url: str) -> np.ndarray:
    info = open_volume(url).info
    return np.asarray(info.origin_nm)


# --- origins ---------------------------------------------------------------------------


def test_precomputed_voxel_offset_is_carried_to_outputs_at_the_same_place(
    phantom, lr, checkpoint_dir, cluster_address, tmp_path
):
    source = cloudvolume_input(tmp_path / "lr", lr, phantom.lr_voxel_nm, compress=False)
    precomputed_out = f"precomputed://file://{tmp_path}/sr"
    run(source, precomputed_out, checkpoint_dir, cluster_address)
    cloud = CloudVolume(f"file://{tmp_path}/sr", mip=0, progress=False)
    assert list(cloud.voxel_offset) == [128, 64, 3] and list(cloud.resolution) == [15, 15, 50]
    corner_nm = np.asarray([3 * 50, 32 * 30, 64 * 30])  # the LR corner, z, y, x
    assert np.allclose(world_corner(precomputed_out), corner_nm)

    zarr_out = str(tmp_path / "sr.zarr")
    run(source, zarr_out, checkpoint_dir, cluster_address)
    transforms = zarr.open_group(zarr_out, mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
    scale, translation = transforms["coordinateTransformations"]
    # OME-Zarr names voxel centres: the first HR centre is half an HR voxel in from the corner
    assert scale["scale"] == [50.0, 15.0, 15.0]
    assert translation["translation"] == [150 + 25, 960 + 7.5, 1920 + 7.5]
    assert np.allclose(world_corner(zarr_out), corner_nm)


def test_ome_zarr_translation_is_carried_from_input_to_output(
    phantom, lr, checkpoint_dir, cluster_address, tmp_path
):
    source = str(tmp_path / "lr.zarr")
    write_array(source, lr, phantom.lr_voxel_nm)
    group = json.loads((tmp_path / "lr.zarr" / "zarr.json").read_text())
    dataset = group["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    dataset["coordinateTransformations"][1]["translation"] = [1000.0, 2000.0, 3000.0]
    (tmp_path / "lr.zarr" / "zarr.json").write_text(json.dumps(group))
    lr_corner = np.asarray([1000 - 25, 2000 - 15, 3000 - 15])
    assert np.allclose(world_corner(source), lr_corner)
    output = str(tmp_path / "sr.zarr")
    run(source, output, checkpoint_dir, cluster_address)
    assert np.allclose(world_corner(output), lr_corner)
    ome = zarr.open_group(output, mode="r").attrs["ome"]["multiscales"][0]
    translation = ome["datasets"][0]["coordinateTransformations"][1]["translation"]
    assert np.allclose(translation, [1000, 2000 - 7.5, 3000 - 7.5])


def test_precomputed_output_refuses_an_origin_between_its_voxels(tmp_path):
    with pytest.raises(VolumeError, match=r"not a whole number .* write OME-Zarr"):
        create_volume(
            f"precomputed://{tmp_path}/em", (2, 8, 8), "uint8", (50.0, 15.0, 15.0), (1, 8, 8),
            origin_nm=(0.0, 7.5, 0.0),
        )  # fmt: skip
    assert not (tmp_path / "em").exists()


def test_roi_in_world_nm_covers_the_same_output_voxels(phantom, lr, tmp_path):
    source = open_volume(
        cloudvolume_input(tmp_path / "lr", lr, phantom.lr_voxel_nm, compress=False)
    )
    # the input's corner is at z 150, y 960, x 1920 nm; output voxels are 50 × 15 × 15 nm
    world = WorldBox.parse("200:300,960:1440,2000:2400")
    request = SuperResolveRequest("in", "out", "ckpt", roi_nm=world)
    assert output_roi(request, source, 2) == Box((1, 0, 5), (3, 32, 32))
    with pytest.raises(PlanError, match=r"--roi .* or --roi-nm"):
        output_roi(SuperResolveRequest("in", "out", "ckpt", roi=Box((0,) * 3, (1,) * 3),
                                       roi_nm=world), source, 2)  # fmt: skip


def test_run_with_a_world_roi_writes_what_the_voxel_roi_writes(
    phantom, lr, checkpoint_dir, cluster_address, tmp_path
):
    source = cloudvolume_input(tmp_path / "lr", lr, phantom.lr_voxel_nm, compress=False)
    by_voxels = run(source, str(tmp_path / "a.zarr"), checkpoint_dir, cluster_address,
                    roi=Box((0, 0, 64), (2, 64, 128)))  # fmt: skip
    by_world = run(source, str(tmp_path / "b.zarr"), checkpoint_dir, cluster_address,
                   roi_nm=WorldBox.parse("150:250,960:1920,2880:3840"))  # fmt: skip
    assert by_world[:, :64, 64:128].any() and np.array_equal(by_voxels, by_world)


# --- voxel size ------------------------------------------------------------------------


def test_zarr_without_voxel_size_is_refused_naming_the_option_and_runs_with_it(
    lr, checkpoint_dir, cluster_address, tmp_path
):
    bare = str(tmp_path / "bare.zarr")
    zarr.create_array(bare, data=lr, chunks=(1, 64, 80))
    output = tmp_path / "sr.zarr"
    with pytest.raises(VolumeError, match=r"records no voxel size: give it with --voxel-size") as e:
        run(bare, str(output), checkpoint_dir, cluster_address)
    assert "\n" not in str(e.value) and not output.exists()
    run(bare, str(output), checkpoint_dir, cluster_address, voxel_size=(50.0, 30.0, 30.0))
    assert open_volume(str(output)).info.voxel_size_nm == (50.0, 15.0, 15.0)


def test_extract_pairs_refuses_an_hr_without_voxel_size_and_takes_the_option(phantom, tmp_path):
    hr, lr = str(tmp_path / "hr.zarr"), str(tmp_path / "lr.zarr")
    zarr.create_array(hr, data=phantom.hr[:2], chunks=(1, 128, 160))
    zarr.create_array(lr, data=phantom.lr[:2], chunks=(1, 64, 80))
    request = PairRequest(hr, str(tmp_path / "pairs"), lr_url=lr)
    with pytest.raises(VolumeError, match=r"records no voxel size: give it with --voxel-size"):
        extract_pairs(request)
    assert not (tmp_path / "pairs").exists()
    store = extract_pairs(replace(request, voxel_size=(50.0, 15.0, 15.0)))
    assert store.manifest["voxel_size_nm"] == {"lr": [50.0, 30.0, 30.0], "hr": [50.0, 15.0, 15.0]}
    assert open_volume(store.lr_url).info.voxel_size_nm == (50.0, 30.0, 30.0)


def test_voxel_size_option_is_parsed_or_refused_in_one_line():
    assert parse_voxel_size("50,7.5,7.5") == (50.0, 7.5, 7.5)
    for text in ("50,7.5", "a,b,c", "0,1,1", "nan,1,1"):
        with pytest.raises(PlanError, match="--voxel-size must be three positive numbers"):
            parse_voxel_size(text)


# --- precomputed encodings -------------------------------------------------------------


def test_gzip_chunk_files_are_read_right_even_without_the_first_chunk(
    phantom, lr, checkpoint_dir, cluster_address, tmp_path
):
    lr = lr.copy()
    lr[:, :32, :32] = 0  # the chunks at the volume's first corner are never written
    gzip = tmp_path / "gz"
    # CloudVolume's default on file:// is gzip; all-zero chunks are left out, as in aligned stacks
    source = cloudvolume_input(gzip, lr, phantom.lr_voxel_nm, delete_black_uploads=True)
    assert not (gzip / "30_30_50" / "64-96_32-64_3-4.gz").exists()
    assert (gzip / "30_30_50" / "96-128_32-64_3-4.gz").exists()
    np.testing.assert_array_equal(open_volume(source).read(ALL), as_cloudvolume_reads(gzip))
    np.testing.assert_array_equal(open_volume(source).read(ALL), lr)
    raw = cloudvolume_input(tmp_path / "raw", lr, phantom.lr_voxel_nm, compress=False)
    from_gzip = run(source, str(tmp_path / "a.zarr"), checkpoint_dir, cluster_address)
    from_raw = run(raw, str(tmp_path / "b.zarr"), checkpoint_dir, cluster_address)
    assert from_gzip.any() and np.array_equal(from_gzip, from_raw)


@pytest.mark.parametrize("compress", [False, None])
def test_jpeg_precomputed_input_runs_end_to_end(
    phantom, lr, compress, checkpoint_dir, cluster_address, tmp_path
):
    source = cloudvolume_input(
        tmp_path / "jpeg", lr, phantom.lr_voxel_nm, encoding="jpeg", compress=compress
    )
    decoded = as_cloudvolume_reads(tmp_path / "jpeg")
    assert 0 < np.abs(decoded.astype(int) - lr).mean() < 8  # lossy, but the same image
    np.testing.assert_array_equal(open_volume(source).read(ALL), decoded)
    same_pixels = str(tmp_path / "decoded.zarr")
    write_array(same_pixels, decoded, phantom.lr_voxel_nm)
    from_jpeg = run(source, str(tmp_path / "a.zarr"), checkpoint_dir, cluster_address)
    from_decoded = run(same_pixels, str(tmp_path / "b.zarr"), checkpoint_dir, cluster_address)
    assert np.array_equal(from_jpeg, from_decoded)


# --- N5 --------------------------------------------------------------------------------


def n5_input(path: Path, lr: np.ndarray, attributes: dict) -> str:
    store = ts.open(
        {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {
                "dimensions": list(lr.shape[::-1]),
                "blockSize": [32, 32, 1],
                "dataType": "uint8",
                "compression": {"type": "gzip"},
            },
        },
        create=True,
    ).result()
    store.write(lr.T).result()
    metadata = json.loads((path / "attributes.json").read_text())
    (path / "attributes.json").write_text(json.dumps({**metadata, **attributes}))
    return f"n5://{path}"


@pytest.mark.parametrize(
    "attributes",
    [
        {"pixelResolution": {"dimensions": [0.03, 0.03, 0.05], "unit": "um"}},
        {"resolution": [30, 30, 50], "units": ["nm", "nm", "nm"]},
    ],
)
def test_n5_input_reads_in_zyx_with_its_voxel_size(phantom, attributes, tmp_path):
    volume = open_volume(n5_input(tmp_path / "lr.n5", phantom.lr, attributes))
    assert volume.info.format == "n5" and volume.info.shape == phantom.lr.shape
    assert np.allclose(volume.info.voxel_size_nm, phantom.lr_voxel_nm)
    np.testing.assert_array_equal(volume.read(ALL), phantom.lr)


def test_n5_input_super_resolves_like_the_same_zarr(
    phantom, lr, checkpoint_dir, cluster_address, tmp_path
):
    source = n5_input(tmp_path / "lr.n5", lr, {"resolution": [30, 30, 50]})
    same = str(tmp_path / "lr.zarr")
    write_array(same, lr, phantom.lr_voxel_nm)
    from_n5 = run(source, str(tmp_path / "a.zarr"), checkpoint_dir, cluster_address)
    from_zarr = run(same, str(tmp_path / "b.zarr"), checkpoint_dir, cluster_address)
    assert np.array_equal(from_n5, from_zarr)
    with pytest.raises(VolumeError, match="cannot create N5"):
        create_volume(f"n5://{tmp_path}/out.n5", (2, 8, 8), "uint8", (1.0,) * 3, (1, 8, 8))


# --- OME-Zarr outputs ------------------------------------------------------------------


def test_ome_zarr_output_has_recommended_fields_and_zarr_python_does_not_warn(
    phantom, lr, checkpoint_dir, cluster_address, tmp_path
):
    source, output = str(tmp_path / "lr.zarr"), str(tmp_path / "sr.zarr")
    write_array(source, lr, phantom.lr_voxel_nm)
    run(source, output, checkpoint_dir, cluster_address)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(output, mode="r")
        members = dict(group.members())
    assert list(members) == ["0"]
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert multiscale["name"] == "sr" and multiscale["type"]
    assert {"description", "method", "version"} <= set(multiscale["metadata"])
