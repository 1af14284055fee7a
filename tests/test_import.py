"""`emsr import`: a lab's TIFF stack becomes an OME-Zarr volume, exactly, resumably, and
anything the pipeline could not use is refused before an output exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import tifffile
import zarr

from pipeline.errors import LedgerError, VolumeError
from pipeline.tiff_import import TiffStack, import_stack
from pipeline.volumes import open_volume

VOXEL = (50.0, 45.0, 45.0)
EMSR = str(Path(sys.executable).with_name("emsr"))


@pytest.fixture()
def stack8(tmp_path, phantom) -> tuple[object, np.ndarray]:
    """A folder of 8-bit per-section TIFFs, numbered as microscopes do (s1 … s12)."""
    folder = tmp_path / "sections"
    folder.mkdir()
    sections = np.concatenate([phantom.lr, phantom.lr[::-1]])
    for z, section in enumerate(sections):
        tifffile.imwrite(folder / f"s{z + 1}.tif", section)
    (folder / "notes.txt").write_text("not an image")
    return folder, sections


def test_a_folder_of_8_bit_sections_imports_exactly_in_natural_order(stack8, tmp_path):
    folder, sections = stack8
    output = str(tmp_path / "em.zarr")
    report = import_stack(TiffStack.scan(folder), output, VOXEL, threads=2)
    assert report.slabs_written == len(sections) and report.slabs_skipped == 0
    np.testing.assert_array_equal(open_volume(output).read((slice(None),) * 3), sections)
    assert open_volume(output).info.voxel_size_nm == VOXEL
    # independent readers see the same pixels and the OME-Zarr voxel size
    store = ts.open({"driver": "zarr3", "kvstore": f"file://{output}/0"}).result()
    np.testing.assert_array_equal(store.read().result(), sections)
    group = zarr.open_group(output, mode="r")
    scale = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == list(VOXEL)


def test_a_multi_page_16_bit_tiff_imports_exactly(tmp_path, phantom):
    sections = (phantom.lr.astype(np.uint16) * 257)[:, :, :70]
    tifffile.imwrite(tmp_path / "stack.tif", sections)
    output = str(tmp_path / "em16.zarr")
    import_stack(TiffStack.scan(tmp_path / "stack.tif"), output, VOXEL, chunk=(2, 32, 32))
    volume = open_volume(output)
    assert volume.info.dtype == np.uint16 and volume.info.chunk == (2, 32, 32)
    np.testing.assert_array_equal(volume.read((slice(None),) * 3), sections)


def test_an_interrupted_import_resumes_where_it_stopped(stack8, tmp_path):
    folder, sections = stack8
    output = str(tmp_path / "em.zarr")

    def interrupt_after_four(done: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_stack(TiffStack.scan(folder), output, VOXEL, threads=1,
                     on_progress=interrupt_after_four)  # fmt: skip
    resumed = import_stack(TiffStack.scan(folder), output, VOXEL, threads=2)
    assert resumed.slabs_skipped >= 4
    assert resumed.slabs_skipped + resumed.slabs_written == len(sections)
    np.testing.assert_array_equal(open_volume(output).read((slice(None),) * 3), sections)
    again = import_stack(TiffStack.scan(folder), output, VOXEL)
    assert again.slabs_written == 0


def test_a_changed_stack_is_not_mixed_into_an_earlier_import(stack8, tmp_path):
    folder, sections = stack8
    output = str(tmp_path / "em.zarr")
    import_stack(TiffStack.scan(folder), output, VOXEL)
    tifffile.imwrite(folder / "s3.tif", 255 - sections[2])
    with pytest.raises(LedgerError, match="TIFFs changed"):
        import_stack(TiffStack.scan(folder), output, VOXEL)
    with pytest.raises(VolumeError, match="voxel size"):
        import_stack(TiffStack.scan(folder), output, (40.0, 45.0, 45.0))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: tifffile.imwrite(d / "a.tif", np.zeros((8, 8, 3), np.uint8)), "2-D grayscale"),
        (lambda d: tifffile.imwrite(d / "a.tif", np.zeros((8, 8), np.int32)), "supported"),
        (lambda d: (tifffile.imwrite(d / "a1.tif", np.zeros((8, 8), np.uint8)),
                    tifffile.imwrite(d / "a2.tif", np.zeros((8, 9), np.uint8))), "same size"),
        (lambda d: (d / "a.tif").write_bytes(b"not a tiff at all"), "not a readable TIFF"),
        (lambda d: None, "no .tif"),
    ],
)  # fmt: skip
def test_stacks_the_pipeline_cannot_use_are_refused_in_one_line(tmp_path, make, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    make(folder)
    with pytest.raises(VolumeError, match=message) as refused:
        TiffStack.scan(folder)
    assert "\n" not in str(refused.value)


def test_emsr_import_on_the_command_line(stack8, tmp_path, prefect_server):
    folder, sections = stack8
    output = tmp_path / "cli.zarr"
    env = prefect_server.environment()
    missing = subprocess.run([EMSR, "import", str(folder), str(output)], capture_output=True,
                             text=True, env=env, timeout=300)  # fmt: skip
    assert missing.returncode == 2 and "--voxel-size" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not output.exists()
    result = subprocess.run(
        [EMSR, "import", str(folder), str(output), "--voxel-size", "50,45,45"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{len(sections)} slabs written" in result.stderr.splitlines()[-1]
    np.testing.assert_array_equal(open_volume(str(output)).read((slice(None),) * 3), sections)
