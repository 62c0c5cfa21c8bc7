"""The cifar10 spec: CIFAR-10's binary batches, loose, in cifar-10-batches-bin/ or as the
tar.gz archive; split sizes, pixel and channel order, damaged files, lookup and the download.
Tiny files in the real format only; nothing downloads (urlopen is replaced where it matters)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from convae.data import cifar as _cifar
from convae.data import has_test_split, load_dataset
from convae.errors import DataError, DatasetNotFoundError

N = 7  # records per batch file
TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST = "test_batch.bin"
META = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"


# ---------------------------------------------------------------------------------------------
# helpers


def record(label: int, red: int, green: int, blue: int, x: int = 0) -> bytes:
    """One record: planes filled with `red`, `green`, `blue`; pixel (y=1, x) of the red plane is 200,
    pixel (y=2, x=3) of the blue plane is 201 (checks row-major order within a plane)."""
    planes = np.empty((3, 32, 32), np.uint8)
    planes[0], planes[1], planes[2] = red, green, blue
    planes[0, 1, x] = 200
    planes[2, 2, 3] = 201
    return bytes([label]) + planes.tobytes()


def batch(file_index: int, n: int = N) -> bytes:
    """n records of file `file_index` (0..4 train, 5 test): red = file, green = record, blue = 100 + record."""
    return b"".join(record((file_index + i) % 10, file_index, i, 100 + i, x=i) for i in range(n))


def batch_files(n: int = N) -> dict[str, bytes]:
    files = {name: batch(i, n) for i, name in enumerate(TRAIN)}
    files[TEST] = batch(5, n)
    return files


def write_loose(folder: Path, files: dict[str, bytes] | None = None, meta: bytes | None = META) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (files or batch_files()).items():
        (folder / name).write_bytes(data)
    if meta is not None:
        (folder / "batches.meta.txt").write_bytes(meta)
    return folder


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_archive(folder: Path, members: dict[str, bytes] | None = None) -> Path:
    """cifar-10-binary.tar.gz as published: everything under cifar-10-batches-bin/, plus a readme."""
    if members is None:
        members = {f"cifar-10-batches-bin/{name}": data for name, data in batch_files().items()}
        members["cifar-10-batches-bin/batches.meta.txt"] = META
        members["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-10-binary.tar.gz"
    path.write_bytes(tar_bytes(members))
    return path


def system(tmp_path: Path) -> Path:
    return tmp_path / "system" / "cifar10"


# ---------------------------------------------------------------------------------------------
# good files in each layout


LAYOUTS = {
    "loose": lambda folder: write_loose(folder),
    "subfolder": lambda folder: write_loose(folder / "cifar-10-batches-bin"),
    "tar.gz": lambda folder: write_archive(folder),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_splits_sizes_labels_and_pixel_order(isolated_data, layout):
    LAYOUTS[layout](system(isolated_data))
    train, test, everything = (load_dataset("cifar10", split) for split in ("train", "test", "all"))
    assert train.images.shape == (5 * N, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (N, 3, 32, 32) and len(everything) == 6 * N
    assert torch.equal(everything.images, torch.cat([train.images, test.images]))
    np.testing.assert_array_equal(everything.labels, np.concatenate([train.labels, test.labels]))
    assert train.labels.dtype == np.int64 and test.labels.dtype == np.int64
    for dataset, files in ((train, range(5)), (test, [5])):
        for position, (file_index, i) in enumerate((f, i) for f in files for i in range(N)):
            image = dataset.images[position]
            assert int(dataset.labels[position]) == (file_index + i) % 10
            assert int(image[0, 0, 0]) == file_index and int(image[1, 31, 31]) == i
            assert int(image[2, 0, 0]) == 100 + i
            assert int(image[0, 1, i]) == 200 and int(image[0, 1, i + 1]) == file_index
            assert int(image[2, 2, 3]) == 201 and int(image[2, 3, 2]) == 100 + i  # y=2, x=3: row-major
    assert train.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                 "ship", "truck"]
    assert has_test_split("cifar10")


def test_class_names_from_meta_and_the_standard_names_without_it(isolated_data):
    names = [f"class{i}" for i in range(10)]
    write_loose(system(isolated_data), meta=("\n".join(names) + "\n\n").encode())
    assert load_dataset("cifar10", "test").class_names == names
    (system(isolated_data) / "batches.meta.txt").unlink()
    assert load_dataset("cifar10", "test").class_names[:3] == ["airplane", "automobile", "bird"]
    (system(isolated_data) / "batches.meta.txt").write_bytes(b"only\ntwo\n")  # not ten names: the standard ones
    assert load_dataset("cifar10", "test").class_names[-1] == "truck"


def test_archive_members_at_the_top_level_too(isolated_data):
    members = {name: data for name, data in batch_files().items()}
    write_archive(system(isolated_data), members)
    dataset = load_dataset("cifar10", "all")
    assert len(dataset) == 6 * N and int(dataset.images[-1, 0, 0, 0]) == 5


def test_channels_and_image_size_convert_like_other_specs(isolated_data):
    write_loose(system(isolated_data))
    gray = load_dataset("cifar10", "test", channels=1)
    assert gray.images.shape == (N, 1, 32, 32)
    r, g, b = 5, 3, 103  # record 3 of the test file
    assert int(gray.images[3, 0, 31, 31]) == (19595 * r + 38470 * g + 7471 * b + 2**15) >> 16
    small = load_dataset("cifar10", "train", image_size="16x8")
    assert small.images.shape == (5 * N, 3, 16, 8) and small.images.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------
# damaged files


def test_truncated_file_names_the_file_its_size_and_the_record_size(isolated_data):
    files = batch_files()
    files[TRAIN[2]] = files[TRAIN[2]][:-100]
    write_loose(system(isolated_data), files)
    size = N * 3073 - 100
    with pytest.raises(DataError, match=rf"data_batch_3\.bin: {size} bytes .* 3073-byte"):
        load_dataset("cifar10")
    assert len(load_dataset("cifar10", "test")) == N  # the test split does not read the train files


def test_wrong_record_size_names_the_file(isolated_data):
    files = batch_files()
    files[TEST] = b"".join(record(1, 0, 0, 0)[:1] + b"\x02" + record(1, 0, 0, 0)[1:] for _ in range(N))  # 3074-byte records
    write_archive(system(isolated_data), {f"cifar-10-batches-bin/{name}": data for name, data in files.items()})
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", "test")
    message = str(caught.value)
    assert "test_batch.bin" in message and str(N * 3074) in message and "3073" in message
    assert "CIFAR-100" in message


def test_empty_file_is_a_data_error(isolated_data):
    files = batch_files()
    files[TEST] = b""
    write_loose(system(isolated_data), files)
    with pytest.raises(DataError, match=r"test_batch\.bin: 0 bytes"):
        load_dataset("cifar10", "test")


def test_label_byte_above_9_names_the_file_and_record(isolated_data):
    files = batch_files()
    data = bytearray(files[TRAIN[4]])
    data[4 * 3073] = 10  # record 4's label byte
    files[TRAIN[4]] = bytes(data)
    write_loose(system(isolated_data) / "cifar-10-batches-bin", files)
    with pytest.raises(DataError, match=r"data_batch_5\.bin: record 4 .* label byte 10"):
        load_dataset("cifar10", "all")


@pytest.mark.parametrize("layout", ["loose", "tar.gz"])
def test_missing_batch_names_the_missing_file(isolated_data, layout):
    files = batch_files()
    del files[TRAIN[3]]
    cache = isolated_data / "home" / ".cache" / "convae" / "cifar10"
    if layout == "loose":
        write_loose(cache, files)
    else:
        write_archive(cache, {f"cifar-10-batches-bin/{name}": data for name, data in files.items()})
    write_loose(system(isolated_data))  # a full set later in the search: not used
    with pytest.raises(DataError, match=r"data_batch_4\.bin") as caught:
        load_dataset("cifar10", "train")
    assert not isinstance(caught.value, DatasetNotFoundError) and str(cache) in str(caught.value)
    assert len(load_dataset("cifar10", "test")) == N  # test needs only test_batch.bin


def test_partial_folder_is_not_skipped_silently(isolated_data, monkeypatch):
    write_loose(isolated_data / "data" / "cifar10", {TEST: batch(5)})
    write_loose(system(isolated_data))
    monkeypatch.setenv("CONVAE_DATA", str(isolated_data / "data"))
    with pytest.raises(DataError, match=r"data_batch_1\.bin.*'train' split") as caught:
        load_dataset("cifar10")
    assert not isinstance(caught.value, DatasetNotFoundError)
    assert str(isolated_data / "data" / "cifar10") in str(caught.value)


@pytest.mark.parametrize("name", ["/etc/cifar-10-batches-bin/test_batch.bin", "../test_batch.bin",
                                  "cifar-10-batches-bin/../../test_batch.bin"])
def test_archive_with_unsafe_member_names_is_rejected(isolated_data, name):
    members = {f"cifar-10-batches-bin/{n}": data for n, data in batch_files().items()}
    members[name] = batch(5)
    write_archive(system(isolated_data), members)
    with pytest.raises(DataError, match="absolute or '..' path"):
        load_dataset("cifar10", "test")


def test_damaged_archive_is_a_data_error(isolated_data):
    path = write_archive(system(isolated_data))
    whole = path.read_bytes()
    for cut in (len(whole) // 2, len(whole) - 6):  # cut inside the members; inside gzip's trailer
        path.write_bytes(whole[:cut])
        for split in ("test", "train"):
            with pytest.raises(DataError, match="cifar-10-binary.tar.gz: not a readable tar.gz"):
                load_dataset("cifar10", split)
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF  # damaged compressed data
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz: not a readable tar.gz"):
        load_dataset("cifar10", "train")
    path.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a readable tar.gz"):
        load_dataset("cifar10", "test")


# ---------------------------------------------------------------------------------------------
# lookup


def test_found_through_convae_data_first(isolated_data, monkeypatch):
    def fill(folder, value):
        files = {name: b"".join(record(0, value, 0, 0) for _ in range(2)) for name in TRAIN + [TEST]}
        write_loose(folder, files)

    fill(isolated_data / "data" / "cifar10", 11)
    fill(isolated_data / "home" / ".cache" / "convae" / "cifar10", 22)
    fill(system(isolated_data), 33)
    assert int(load_dataset("cifar10").images[0, 0, 0, 0]) == 22  # the cache before the system roots
    monkeypatch.setenv("CONVAE_DATA", str(isolated_data / "data"))
    dataset = load_dataset("cifar10")
    assert int(dataset.images[0, 0, 0, 0]) == 11 and len(dataset) == 10


def test_no_files_error_says_where_it_looked_the_url_and_how_to_fix(isolated_data, monkeypatch):
    monkeypatch.setenv("CONVAE_DATA", str(isolated_data / "data"))
    (isolated_data / "data" / "cifar10").mkdir(parents=True)
    (isolated_data / "data" / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"pickles")
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar10", "test")
    message = str(caught.value)
    for expected in (str(isolated_data / "data" / "cifar10"), str(isolated_data / "home" / ".cache" / "convae" / "cifar10"),
                     str(system(isolated_data)), "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                     "CONVAE_NO_DOWNLOAD", "CONVAE_DATA", "cifar-10-batches-bin", "data_batch_1.bin",
                     "copy cifar-10-binary.tar.gz into one of the folders above", "pickled"):
        assert expected in message


# ---------------------------------------------------------------------------------------------
# downloading (urlopen replaced: nothing leaves the machine)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self


def test_failed_download_leaves_no_file_and_no_cache_folder(isolated_data, monkeypatch):
    monkeypatch.delenv("CONVAE_NO_DOWNLOAD")
    urls = []

    def offline(url, timeout=None):
        urls.append(url)
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(_cifar.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError, match="failed: .*no network here") as caught:
        load_dataset("cifar10")
    assert urls == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert "CONVAE_NO_DOWNLOAD" not in str(caught.value).split("To provide them")[1]
    assert not (isolated_data / "home").exists()  # no empty ~/.cache/convae/cifar10 left behind


def test_download_cut_off_or_with_wrong_sum_leaves_nothing(isolated_data, monkeypatch):
    monkeypatch.delenv("CONVAE_NO_DOWNLOAD")
    (isolated_data / "home").mkdir()
    archive = tar_bytes({f"cifar-10-batches-bin/{name}": data for name, data in batch_files().items()})

    class CutOff(FakeResponse):
        def read(self, size=-1):
            if self.tell() > 100:
                raise TimeoutError("timed out")
            return super().read(50)

    monkeypatch.setattr(_cifar.urllib.request, "urlopen", lambda url, timeout=None: CutOff(archive))
    with pytest.raises(DatasetNotFoundError, match="timed out"):
        load_dataset("cifar10")
    assert os.listdir(isolated_data / "home") == []
    monkeypatch.setattr(_cifar.urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(archive))
    with pytest.raises(DataError, match="does not match the pinned"):  # the real pin: these bytes differ
        load_dataset("cifar10")
    assert os.listdir(isolated_data / "home") == []


def test_download_with_matching_sum_goes_into_the_cache(isolated_data, monkeypatch):
    monkeypatch.delenv("CONVAE_NO_DOWNLOAD")
    archive = tar_bytes({f"cifar-10-batches-bin/{name}": data for name, data in batch_files().items()})
    monkeypatch.setattr(_cifar, "SHA256", hashlib.sha256(archive).hexdigest())
    monkeypatch.setattr(_cifar.urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(archive))
    assert len(load_dataset("cifar10", "all")) == 6 * N
    cache = isolated_data / "home" / ".cache" / "convae" / "cifar10"
    assert sorted(os.listdir(cache)) == ["cifar-10-binary.tar.gz"]
    assert (cache / "cifar-10-binary.tar.gz").read_bytes() == archive
    monkeypatch.setattr(_cifar.urllib.request, "urlopen", None)  # found in the cache now: no second download
    assert len(load_dataset("cifar10", "test")) == N


def test_pinned_sum_is_the_published_archives():
    assert _cifar.SHA256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    assert _cifar.URL == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
