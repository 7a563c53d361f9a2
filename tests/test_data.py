"""benchmarks.data on the real shared files (MedMNIST, ISIC 2018) and on small synthetic image trees."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

import medmnist.dataset
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import benchmarks.data.medmnist as mm
from benchmarks.data import (DataError, DatasetBundle, available_datasets, check_dataset, load_dataset,
                             resolve_data_root)
from benchmarks.data.images import decode_bytes
from benchmarks.data.splits import grouped_stratified_holdout

ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache so synthetic datasets never touch the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PETL_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """medmnist's download fails as it does without a network (never hit the network in tests)."""
    def fail(self: object) -> None:
        raise RuntimeError("Automatic download failed! (simulated offline)")
    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", fail)


# --- registry / roots ---------------------------------------------------------------------------------------

def test_available_datasets_lists_all_registered() -> None:
    names = available_datasets()
    assert set(mm.FLAGS_2D) | {"isic2018", "brain_mri"} == set(names)


def test_unknown_dataset_lists_available(data_root: Path) -> None:
    for call in (lambda: load_dataset("nosuchmnist", data_root, img_size=28),
                 lambda: check_dataset("nosuchmnist", data_root)):
        with pytest.raises(DataError, match="unknown dataset 'nosuchmnist'.*breastmnist.*isic2018"):
            call()


def test_resolve_data_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PETL_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("PETL_DATA_ROOT")
    assert resolve_data_root(None) == Path.home() / ".cache" / "petl" / "data"


# --- MedMNIST -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,sizes,train_counts", [
    ("breastmnist", (546, 78, 156), (147, 399)),
    ("pneumoniamnist", (4708, 524, 624), (1214, 3494)),
])
def test_medmnist_official_splits(data_root: Path, flag: str, sizes: tuple[int, int, int],
                                  train_counts: tuple[int, int]) -> None:
    check_dataset(flag, data_root)
    b = load_dataset(flag, data_root, img_size=224)
    assert isinstance(b, DatasetBundle) and b.name == flag and b.task == "multiclass" and b.num_classes == 2
    assert (len(b.train), len(b.val), len(b.test)) == sizes
    for split in (b.train, b.val, b.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64 and split.labels.dim() == 1
    assert tuple(torch.bincount(b.train.labels).tolist()) == train_counts
    raw = np.load(data_root / "medmnist" / f"{flag}.npz")
    assert torch.equal(b.test.images[:, 0], torch.from_numpy(raw["test_images"]))   # untouched official pixels


def test_medmnist_missing_size_offline(data_root: Path, offline: None) -> None:
    for call in (lambda: load_dataset("breastmnist", data_root, img_size=64, data_size=64),
                 lambda: check_dataset("breastmnist", data_root, data_size=64)):
        with pytest.raises(DataError, match=r"BreastMNIST file not found: expected .*medmnist/breastmnist_64\.npz"
                                            r".*download failed.*--data-root DIR"):
            call()


def test_medmnist_download_path_is_used(data_root: Path, tmp_path: Path, tmp_cache: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing file goes through medmnist's own download (here replaced by a copy of the official file)."""
    calls = []

    def fake_download(self: medmnist.dataset.MedMNIST) -> None:
        calls.append((self.root, self.size_flag))
        shutil.copy(data_root / "medmnist" / "breastmnist.npz", Path(self.root) / "breastmnist.npz")
    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", fake_download)
    b = load_dataset("breastmnist", tmp_path / "root", img_size=28)
    assert calls == [(str(tmp_path / "root" / "medmnist"), "")] and len(b.train) == 546


def test_medmnist_wrong_keys(tmp_path: Path, tmp_cache: Path) -> None:
    (tmp_path / "medmnist").mkdir()
    np.savez(tmp_path / "medmnist" / "breastmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.zeros((2, 1), np.uint8), images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="lacks the MedMNIST keys val_images, val_labels, test_images, test_labels"):
        load_dataset("breastmnist", tmp_path, img_size=28)
    with pytest.raises(DataError, match="lacks the MedMNIST keys"):
        check_dataset("breastmnist", tmp_path)


def test_medmnist_non_official_file_rejected(tmp_path: Path, tmp_cache: Path) -> None:
    (tmp_path / "medmnist").mkdir()
    arrays = {f"{s}_{k}": np.zeros((2, 28, 28) if k == "images" else (2, 1), np.uint8)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "medmnist" / "breastmnist.npz", **arrays)
    with pytest.raises(DataError, match="not the official 750601b1f35ba3300ea97c75c52ff8f6"):
        load_dataset("breastmnist", tmp_path, img_size=28)


def test_medmnist_memory_mapped_copy_equals_in_memory(data_root: Path, tmp_cache: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    plain = load_dataset("breastmnist", data_root, img_size=28)
    monkeypatch.setattr(mm, "MMAP_THRESHOLD_BYTES", 0)
    mapped = load_dataset("breastmnist", data_root, img_size=28)
    assert list((tmp_cache / "medmnist" / "mmap").glob("breastmnist_train_images_*.u8"))
    for a, b in ((plain.train, mapped.train), (plain.test, mapped.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def _synthetic_npz(root: Path, flag: str, sizes: tuple[int, int, int], image_shape: tuple[int, ...],
                   labels: Any) -> dict[str, np.ndarray]:
    """A compressed npz in MedMNIST's layout under ``root/medmnist/`` (as the official files are); returns it."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels(rng, n)
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "medmnist" / mm.npz_name(flag, 28), **arrays)
    return arrays


def test_medmnist_cache_built_once_by_streaming_then_never_decompressed(
        tmp_path: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the threshold, images are streamed chunk-wise from the zip into the cache on the first load; a second
    load reads only the .npy headers (no array decompression, no np.load of an images key)."""
    arrays = _synthetic_npz(tmp_path, "pathmnist", (50, 8, 12), (28, 28, 3),
                            lambda rng, n: rng.integers(0, 9, (n, 1)).astype(np.uint8))
    monkeypatch.setattr(mm, "verify_md5", lambda flag, path, size: None)     # a synthetic file is not official
    monkeypatch.setattr(mm, "MMAP_THRESHOLD_BYTES", 0)
    monkeypatch.setattr(mm, "STREAM_CHUNK_BYTES", 28 * 28 * 3 * 7)          # 7 rows per chunk: 8 chunks, last partial
    streamed: list[str] = []
    real_stream = mm._stream_to_cache
    monkeypatch.setattr(mm, "_stream_to_cache", lambda zf, path, key, raw, shape: (
        streamed.append(key), real_stream(zf, path, key, raw, shape))[1])
    npz_keys: list[str] = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__",
                        lambda self, key: (npz_keys.append(key), real_getitem(self, key))[1])
    image_bytes: dict[str, int] = {}
    real_read = zipfile.ZipExtFile.read

    def counting_read(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        data = real_read(self, n)
        image_bytes[self.name] = image_bytes.get(self.name, 0) + len(data)
        return data
    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)

    first = load_dataset("pathmnist", tmp_path, img_size=28)
    assert streamed == ["train_images", "val_images", "test_images"]
    assert len(list((tmp_cache / "medmnist" / "mmap").glob("pathmnist_*_images_*.u8"))) == 3
    assert image_bytes["train_images.npy"] >= arrays["train_images"].nbytes
    streamed.clear(), npz_keys.clear(), image_bytes.clear()
    second = load_dataset("pathmnist", tmp_path, img_size=28)
    assert streamed == [] and not any(k.endswith("_images") for k in npz_keys)
    assert all(image_bytes.get(f"{s}_images.npy", 0) < 1024 for s in ("train", "val", "test"))   # headers only
    for b in (first, second):
        for split, name in ((b.train, "train"), (b.val, "val"), (b.test, "test")):
            assert torch.equal(split.images, torch.from_numpy(arrays[f"{name}_images"]).permute(0, 3, 1, 2))
            assert torch.equal(split.labels, torch.from_numpy(arrays[f"{name}_labels"][:, 0].astype(np.int64)))


def test_medmnist_truncated_member_is_an_error_not_a_cache(tmp_path: Path, tmp_cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A member whose .npy header promises more rows than it holds: a DataError, and no cache file is left."""
    arrays = _synthetic_npz(tmp_path, "pathmnist", (20, 4, 4), (28, 28, 3),
                            lambda rng, n: rng.integers(0, 9, (n, 1)).astype(np.uint8))
    with zipfile.ZipFile(tmp_path / "medmnist" / "pathmnist.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            with zf.open(f"{key}.npy", "w") as f:
                if key == "train_images":                                    # header for 20 rows, data for 10
                    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
                    f.write(arr[:10].tobytes())
                else:
                    np.lib.format.write_array(f, arr)
    monkeypatch.setattr(mm, "verify_md5", lambda flag, path, size: None)
    monkeypatch.setattr(mm, "MMAP_THRESHOLD_BYTES", 0)
    with pytest.raises(DataError, match=r"train_images ends after 23520 of 47040 expected bytes \(truncated"):
        load_dataset("pathmnist", tmp_path, img_size=28)
    assert not list((tmp_cache / "medmnist" / "mmap").iterdir())            # no half-written cache left behind


def test_chestmnist_multilabel_load_path(tmp_path: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _synthetic_npz(tmp_path, "chestmnist", (30, 6, 8), (28, 28),
                            lambda rng, n: rng.integers(0, 2, (n, 14)).astype(np.uint8))
    with pytest.raises(DataError, match="not the official"):                # the MD5 check guards real runs ...
        load_dataset("chestmnist", tmp_path, img_size=28)
    monkeypatch.setattr(mm, "verify_md5", lambda flag, path, size: None)    # ... and is bypassed for this file
    b = load_dataset("chestmnist", tmp_path, img_size=28)
    assert b.task == "multilabel" and b.num_classes == 14
    assert b.class_names == [medmnist.INFO["chestmnist"]["label"][str(i)] for i in range(14)]
    for split, name in ((b.train, "train"), (b.val, "val"), (b.test, "test")):
        assert split.labels.dtype == torch.float32 and split.labels.shape == (len(arrays[f"{name}_labels"]), 14)
        assert torch.equal(split.labels, torch.from_numpy(arrays[f"{name}_labels"].astype(np.float32)))
        assert split.images.shape[1:] == (1, 28, 28)
    bad = dict(arrays, val_labels=np.full((6, 14), 2, np.uint8))
    np.savez_compressed(tmp_path / "medmnist" / "chestmnist.npz", **bad)
    with pytest.raises(DataError, match=r"val_labels must be 0/1 of shape \(N, 14\)"):
        load_dataset("chestmnist", tmp_path, img_size=28)


def test_medmnist_tasks_from_info() -> None:
    assert mm.task_of("chestmnist") == "multilabel" and len(medmnist.INFO["chestmnist"]["label"]) == 14
    assert all(mm.task_of(f) == "multiclass" for f in mm.FLAGS_2D if f != "chestmnist")
    assert mm.npz_name("breastmnist", 28) == "breastmnist.npz"
    assert mm.npz_name("breastmnist", 64) == "breastmnist_64.npz"


def test_medmnist_rejects_unknown_size(data_root: Path) -> None:
    with pytest.raises(DataError, match="data_size 50 is not available; choose one of 28, 64, 128, 224"):
        load_dataset("breastmnist", data_root, img_size=28, data_size=50)


# --- ISIC 2018 ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def isic_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache for the real-ISIC tests (splits are carved and saved there, never in the user's cache).

    Decoding the ~7,500 JPEGs takes minutes on 2 cores, so already-decoded pixels are *copied* from the user's
    cache when present (they are keyed by each file's path, size and mtime, so only an exact match is used and
    ``test_isic_rows_match_files`` re-checks pixels against fresh decodes); nothing is written there.
    """
    cache = tmp_path_factory.mktemp("isic_cache")
    user = Path.home() / ".cache" / "petl" / "images" / "isic2018"
    if user.is_dir():
        (cache / "images" / "isic2018").mkdir(parents=True)
        for f in user.glob("32px_*.pt"):
            shutil.copy(f, cache / "images" / "isic2018" / f.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PETL_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="module")
def isic(data_root: Path, isic_cache: Path) -> DatasetBundle:
    return load_dataset("isic2018", data_root, img_size=32, seed=0)


def test_isic_sizes_and_classes(isic: DatasetBundle, data_root: Path) -> None:
    assert isic.class_names == ISIC_CLASSES and isic.task == "multiclass"
    assert len(isic.train) + len(isic.val) == 5984 and len(isic.test) == 1512
    assert 0.13 < len(isic.val) / 5984 < 0.17
    assert isic.train.images.shape[1:] == (3, 32, 32) and isic.train.images.dtype == torch.uint8
    counts = torch.bincount(torch.cat([isic.train.labels, isic.val.labels]), minlength=7).tolist()
    assert dict(zip(ISIC_CLASSES, counts)) == {"NV": 4323, "BKL": 583, "MEL": 491, "BCC": 264, "AKIEC": 183,
                                                "VASC": 80, "DF": 60}
    assert (torch.bincount(isic.val.labels, minlength=7) > 0).all()          # stratified: every class in val
    test_counts = torch.bincount(isic.test.labels, minlength=7).tolist()
    assert dict(zip(ISIC_CLASSES, test_counts))["DF"] == 44


def test_isic_rows_match_files(isic: DatasetBundle, data_root: Path) -> None:
    """Row i of a carved split is the image and label of its id (indices not scrambled by the carving)."""
    gt = pd.read_csv(data_root / "isic2018" / "ISIC2018_Task3_Training_GroundTruth.csv").set_index("image")
    for split in (isic.val, isic.train):
        for i in (0, len(split) // 2, len(split) - 1):
            image_id = split.ids[i]
            assert ISIC_CLASSES[int(split.labels[i])] == gt.loc[image_id].idxmax()
            data = (data_root / "isic2018" / "ISIC2018_Task3_Training_Input" / f"{image_id}.jpg").read_bytes()
            from torchvision.transforms.v2 import functional as TF
            expected = TF.resize(decode_bytes(data), [32, 32], antialias=True)
            assert torch.equal(split.images[i], expected)


def test_isic_val_shares_no_lesion_with_train(isic: DatasetBundle, data_root: Path) -> None:
    meta = pd.read_csv(data_root / "isic2018" / "HAM10000_metadata.csv")
    lesion = dict(zip(meta["image_id"], meta["lesion_id"]))
    train_lesions = {lesion[i] for i in isic.train.ids}
    val_lesions = {lesion[i] for i in isic.val.ids}
    assert val_lesions and not train_lesions & val_lesions


def test_isic_carving_keeps_lesions_together(data_root: Path, tmp_path: Path, tmp_cache: Path) -> None:
    """The shared subset has one image per lesion, so grouping is exercised on a copy with shared lesions."""
    names = sorted(p.stem for p in (data_root / "isic2018" / "ISIC2018_Task3_Training_Input").iterdir())[:60]
    _write_isic(tmp_path / "isic2018", data_root, names, present=names)
    pd.DataFrame({"lesion_id": [f"L{i // 3}" for i in range(60)], "image_id": names}).to_csv(
        tmp_path / "isic2018" / "HAM10000_metadata.csv", index=False)
    for seed in range(5):
        b = load_dataset("isic2018", tmp_path, img_size=8, seed=seed)
        val_lesions = {names.index(i) // 3 for i in b.val.ids}
        train_lesions = {names.index(i) // 3 for i in b.train.ids}
        assert len(b.val) == 9 and not val_lesions & train_lesions


def test_isic_split_reproducible_and_recorded(isic: DatasetBundle, data_root: Path, isic_cache: Path) -> None:
    """The carved split is recorded, and recomputing it from scratch (saved file deleted) gives the same split."""
    saved = list((isic_cache / "isic2018" / "splits").glob("val_split_seed0_*.csv"))
    assert len(saved) == 1
    table = pd.read_csv(saved[0], dtype={"item": str})
    assert set(table.loc[table["split"] == "val", "item"]) == set(isic.val.ids)
    assert set(table.loc[table["split"] == "train", "item"]) == set(isic.train.ids)
    saved[0].unlink()
    again = load_dataset("isic2018", data_root, img_size=32, seed=0)           # recomputed, not reread
    assert saved[0].is_file() and pd.read_csv(saved[0], dtype={"item": str}).equals(table)
    assert again.val.ids == isic.val.ids and again.train.ids == isic.train.ids
    assert torch.equal(again.val.images, isic.val.images) and torch.equal(again.val.labels, isic.val.labels)
    other = load_dataset("isic2018", data_root, img_size=32, seed=1)
    assert set(other.val.ids) != set(isic.val.ids)


def test_isic_without_metadata_warns_of_leakage(data_root: Path, tmp_path: Path, tmp_cache: Path) -> None:
    names = sorted(p.stem for p in (data_root / "isic2018" / "ISIC2018_Task3_Training_Input").iterdir())[:20]
    _write_isic(tmp_path / "isic2018", data_root, names, present=names)
    with pytest.warns(UserWarning, match=r"HAM10000_metadata\.csv not found.*grouped per image.*leakage"):
        b = load_dataset("isic2018", tmp_path, img_size=8)
    assert len(b.train) + len(b.val) == 20 and len(b.val) == 3               # the fallback split is still made


def test_isic_images_missing_from_metadata_are_counted(data_root: Path, tmp_path: Path, tmp_cache: Path) -> None:
    names = sorted(p.stem for p in (data_root / "isic2018" / "ISIC2018_Task3_Training_Input").iterdir())[:20]
    _write_isic(tmp_path / "isic2018", data_root, names, present=names)
    pd.DataFrame({"lesion_id": [f"L{i // 2}" for i in range(15)], "image_id": names[:15]}).to_csv(
        tmp_path / "isic2018" / "HAM10000_metadata.csv", index=False)
    with pytest.warns(UserWarning, match=r"5 of 20 training images are not listed in .*HAM10000_metadata\.csv "
                                         r"\(ISIC_\w+, ISIC_\w+, ISIC_\w+ and 2 more\).*leak"):
        load_dataset("isic2018", tmp_path, img_size=8)


def _write_isic(folder: Path, data_root: Path, names: list[str], present: list[str]) -> None:
    """An official-layout copy: training = ``present`` images (CSV lists ``names``), test = two official test images."""
    src = data_root / "isic2018"
    test_names = ["ISIC_0034524", "ISIC_0034525"]
    for kind, rows_names, files in (("Training", names, present), ("Test", test_names, test_names)):
        (folder / f"ISIC2018_Task3_{kind}_Input").mkdir(parents=True)
        for n in files:
            shutil.copy(src / f"ISIC2018_Task3_{kind}_Input" / f"{n}.jpg", folder / f"ISIC2018_Task3_{kind}_Input")
        rows = [{"image": n, **{c: float(c == "NV") for c in ISIC_CLASSES}} for n in rows_names]
        pd.DataFrame(rows).to_csv(folder / f"ISIC2018_Task3_{kind}_GroundTruth.csv", index=False)


def test_isic_missing_images_listed(data_root: Path, tmp_path: Path, tmp_cache: Path) -> None:
    _write_isic(tmp_path / "isic2018", data_root, ["ISIC_0024306", "ISIC_0024307", "ISIC_9999999"],
                present=["ISIC_0024306", "ISIC_0024307"])
    for call in (lambda: check_dataset("isic2018", tmp_path),
                 lambda: load_dataset("isic2018", tmp_path, img_size=32)):
        with pytest.raises(DataError, match="lists 1 image.*missing from .*ISIC_9999999"):
            call()


def test_isic_missing_folder_and_data_size(tmp_path: Path, data_root: Path) -> None:
    with pytest.raises(DataError, match=r"expected .*isic2018.*--data-root DIR"):
        check_dataset("isic2018", tmp_path)
    with pytest.raises(DataError, match="data_size=64 applies to MedMNIST only"):
        load_dataset("isic2018", data_root, img_size=32, data_size=64)


def test_grouped_holdout_keeps_groups_whole() -> None:
    rng = np.random.default_rng(0)
    groups = [f"g{rng.integers(0, 300)}" for _ in range(1000)]
    labels = [int(g[1:]) % 3 for g in groups]
    mask = grouped_stratified_holdout(labels, groups, 0.15, seed=3)
    held = {g for g, m in zip(groups, mask) if m}
    kept = {g for g, m in zip(groups, mask) if not m}
    assert held and not held & kept
    for c in range(3):
        in_class = np.array(labels) == c
        assert 0.12 < mask[in_class].mean() < 0.18
    assert np.array_equal(mask, grouped_stratified_holdout(labels, groups, 0.15, seed=3))


# --- folder trees -------------------------------------------------------------------------------------------

MODES = ("L", "RGB", "RGBA", "P", "I;16")


def _image(mode: str, size: tuple[int, int], value: int) -> Image.Image:
    if mode == "I;16":      # a 12-bit gradient in a 16-bit container, as scanners write them
        ramp = np.linspace(value, value + 3000, size[0] * size[1]).reshape(size[::-1]).astype(np.uint16)
        return Image.fromarray(ramp)
    base = Image.new("RGB", size, (value, 255 - value, value // 2))
    return base.convert(mode) if mode != "P" else base.convert("P", palette=Image.Palette.ADAPTIVE)


def _tree(root: Path, classes: list[str], per_class: int, fmt_cycle: tuple[str, ...] = ("png", "jpg"),
          offset: int = 0) -> None:
    """Images of mixed modes, sizes and formats; ``offset`` makes a second tree's pixels differ from the first."""
    k = 0
    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            mode = MODES[k % len(MODES)]
            fmt = "png" if mode in ("RGBA", "P", "I;16") else fmt_cycle[k % len(fmt_cycle)]
            size = (20 + 7 * (k % 5), 18 + 5 * (k % 3))
            _image(mode, size, (17 * k + 40 * ci + 101 * offset) % 256).save(root / cls / f"img{k:03d}.{fmt}")
            k += 1


BRAIN_CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def test_brain_mri_layout_mixed_modes(tmp_path: Path, tmp_cache: Path) -> None:
    _tree(tmp_path / "brain_mri" / "Training", BRAIN_CLASSES, 14)
    _tree(tmp_path / "brain_mri" / "Testing", BRAIN_CLASSES, 3, offset=1)
    check_dataset("brain_mri", tmp_path)
    b = load_dataset("brain_mri", tmp_path, img_size=24, seed=0)
    assert b.class_names == BRAIN_CLASSES and b.num_classes == 4
    assert len(b.train) + len(b.val) == 56 and len(b.test) == 12
    assert torch.bincount(b.val.labels, minlength=4).tolist() == [2, 2, 2, 2]     # 15 % of 14 per class
    assert all(i.startswith("Training/") for i in b.train.ids + b.val.ids)
    assert all(i.startswith("Testing/") for i in b.test.ids)
    for split in (b.train, b.val, b.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 24, 24)
    i16 = [i for i, n in enumerate(b.train.ids) if n.endswith("img004.png")]   # the I;16 image: scaled, not black
    assert i16 and int(b.train.images[i16[0]].max()) >= 250 and int(b.train.images[i16[0]].min()) <= 5


def test_brain_mri_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected .*brain_mri/Training/<class>/.*--data-root DIR"):
        check_dataset("brain_mri", tmp_path)


def test_grayscale_tree_stays_one_channel(tmp_path: Path, tmp_cache: Path) -> None:
    for c, cls in enumerate(("a", "b")):
        (tmp_path / "t" / cls).mkdir(parents=True)
        for j in range(10):
            Image.fromarray(np.full((30, 30), j * 20 + c, np.uint8)).save(tmp_path / "t" / cls / f"{j}.png")
    b = load_dataset(f"folder:{tmp_path / 't'}", None, img_size=16)
    assert b.train.images.shape[1:] == (1, 16, 16)


def test_plain_tree_seeded_stratified_split(tmp_path: Path, tmp_cache: Path) -> None:
    _tree(tmp_path / "plain", ["cat_a", "cat_b", "cat_c"], 20)
    name = f"folder:{tmp_path / 'plain'}"
    check_dataset(name, None)
    b = load_dataset(name, None, img_size=16, seed=0)
    assert b.name == name and b.class_names == ["cat_a", "cat_b", "cat_c"]
    assert (len(b.train), len(b.val), len(b.test)) == (42, 9, 9)
    for split in (b.val, b.test):
        assert torch.bincount(split.labels, minlength=3).tolist() == [3, 3, 3]
    ids = [set(s.ids) for s in (b.train, b.val, b.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]) and len(set().union(*ids)) == 60
    same = load_dataset(name, None, img_size=16, seed=0)
    other = load_dataset(name, None, img_size=16, seed=1)
    assert same.test.ids == b.test.ids and same.val.ids == b.val.ids
    assert set(other.test.ids) != set(b.test.ids)


def test_train_val_test_folders_used_as_given(tmp_path: Path, tmp_cache: Path) -> None:
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _tree(tmp_path / "tvt" / split, ["x", "y"], n, offset={"train": 0, "val": 1, "test": 2}[split])
    b = load_dataset(f"folder:{tmp_path / 'tvt'}", None, img_size=16)
    assert (len(b.train), len(b.val), len(b.test)) == (12, 4, 6)


def test_corrupt_image_listed_or_skipped(tmp_path: Path, tmp_cache: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "c", ["a", "b"], 10)
    (tmp_path / "c" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    name = f"folder:{tmp_path / 'c'}"
    with pytest.raises(DataError, match=r"1 unreadable image file\(s\): .*broken\.png.*skip_unreadable=True"):
        load_dataset(name, None, img_size=16)
    b = load_dataset(name, None, img_size=16, skip_unreadable=True)
    assert len(b.train) + len(b.val) + len(b.test) == 20
    assert "skipped 1 unreadable image file(s)" in capsys.readouterr().err
    with pytest.raises(DataError, match="broken.png"):          # the cached decode still reports it
        load_dataset(name, None, img_size=16)


def test_duplicate_across_splits_warns(tmp_path: Path, tmp_cache: Path) -> None:
    _tree(tmp_path / "brain_mri" / "Training", BRAIN_CLASSES, 8)
    _tree(tmp_path / "brain_mri" / "Testing", BRAIN_CLASSES, 2, offset=1)
    shutil.copy(tmp_path / "brain_mri" / "Training" / "glioma" / "img001.jpg",
                tmp_path / "brain_mri" / "Testing" / "glioma" / "copy.jpg")
    with pytest.warns(UserWarning, match=r"byte-identical across splits.*Testing/glioma/copy\.jpg"):
        load_dataset("brain_mri", tmp_path, img_size=16)


def test_folder_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        check_dataset(f"folder:{tmp_path / 'nope'}", None)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no class subfolders with images"):
        check_dataset(f"folder:{tmp_path / 'empty'}", None)


def test_decode_bytes_modes() -> None:
    for mode, channels in (("L", 1), ("RGB", 3), ("RGBA", 3), ("P", 3), ("I;16", 1)):
        buf = io.BytesIO()
        _image(mode, (9, 7), 100).save(buf, format="PNG")
        t = decode_bytes(buf.getvalue())
        assert t.dtype == torch.uint8 and t.shape == (channels, 7, 9)
