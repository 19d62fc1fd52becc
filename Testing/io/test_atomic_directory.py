"""Tests for AtomicOutputSet.add_directory: a directory output (e.g. ``.ome.zarr``) that appears with
the rest of its output set or not at all; overwrite moves the old tree aside and restores it on
rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ScancoUnitsLib.io.transaction import (
    AtomicOutputSet,
    OutputError,
    OutputExistsError,
    live_partials,
    remove_all_partials,
)


def names(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def fill(tree: Path, text: str) -> None:
    (tree / "sub").mkdir()
    (tree / "sub" / "chunk").write_text(text)
    (tree / "top.json").write_text(text)


def content(tree: Path):
    return {str(p.relative_to(tree)): p.read_text() for p in sorted(tree.rglob("*")) if p.is_file()}


# every test must leave no registered temporary file or folder (the fixture lives in conftest.py)
pytestmark = pytest.mark.usefixtures("no_leftover_registry")


def test_commit_renames_hidden_temp_directory_with_the_files(tmp_path):
    final = tmp_path / "scan.ome.zarr"
    with AtomicOutputSet() as outputs:
        temp = outputs.add_directory(final)
        assert temp.is_dir() and temp.parent == tmp_path and list(temp.iterdir()) == []
        assert temp.name.startswith(".scan.ome.zarr.partial-")
        assert outputs.temp_path(final) == temp
        assert temp in live_partials()
        fill(temp, "new")
        with outputs.add(tmp_path / "scan_metadata.json", "w", encoding="utf-8") as meta:
            meta.write("{}")
        assert not final.exists()
    assert names(tmp_path) == ["scan.ome.zarr", "scan_metadata.json"]
    assert content(final) == {"sub/chunk": "new", "top.json": "new"}
    assert outputs.final_paths == [final, tmp_path / "scan_metadata.json"]


def test_abort_removes_the_tree(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicOutputSet() as outputs:
            fill(outputs.add_directory(tmp_path / "scan.ome.zarr"), "new")
            outputs.add(tmp_path / "scan.nrrd").write(b"x")
            raise RuntimeError("boom")
    assert names(tmp_path) == []
    assert outputs.state == "aborted"


def test_existing_directory_without_overwrite_is_refused(tmp_path):
    final = tmp_path / "scan.ome.zarr"
    final.mkdir()
    outputs = AtomicOutputSet()
    with pytest.raises(OutputExistsError, match="scan.ome.zarr.*exists already"):
        outputs.add_directory(final)
    assert names(tmp_path) == ["scan.ome.zarr"]


def test_directory_appearing_before_commit_is_not_replaced(tmp_path):
    final = tmp_path / "scan.ome.zarr"
    outputs = AtomicOutputSet()
    fill(outputs.add_directory(final), "new")
    final.mkdir()  # someone else made the folder meanwhile
    fill(final, "theirs")
    with pytest.raises(OutputExistsError):
        outputs.commit()
    assert names(tmp_path) == ["scan.ome.zarr"]
    assert content(final) == {"sub/chunk": "theirs", "top.json": "theirs"}


def test_overwrite_replaces_old_tree_and_removes_it(tmp_path):
    final = tmp_path / "scan.ome.zarr"
    final.mkdir()
    fill(final, "old")
    (final / "stale_level").mkdir()  # a file the new tree lacks must not survive
    with AtomicOutputSet(overwrite=True) as outputs:
        fill(outputs.add_directory(final), "new")
    assert names(tmp_path) == ["scan.ome.zarr"]
    assert content(final) == {"sub/chunk": "new", "top.json": "new"}
    assert not (final / "stale_level").exists()


def test_overwrite_refuses_to_replace_a_file_by_a_directory(tmp_path):
    (tmp_path / "scan.ome.zarr").write_text("a file")
    with pytest.raises(OutputError, match="a file has this name"):
        AtomicOutputSet(overwrite=True).add_directory(tmp_path / "scan.ome.zarr")


def test_missing_parent_folder_is_one_clear_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        AtomicOutputSet().add_directory(tmp_path / "nope" / "scan.ome.zarr")


def test_rollback_restores_old_directory_when_another_member_fails(tmp_path):
    final = tmp_path / "scan.ome.zarr"
    final.mkdir()
    fill(final, "old")
    (tmp_path / "scan.nrrd").write_bytes(b"old nrrd")
    outputs = AtomicOutputSet(overwrite=True)
    fill(outputs.add_directory(final), "new")
    outputs.add(tmp_path / "scan.nrrd").write(b"new nrrd")
    # the file member cannot be placed: a folder took its name after it was added
    (tmp_path / "scan.nrrd").unlink()
    (tmp_path / "scan.nrrd").mkdir()
    with pytest.raises(OutputError):
        outputs.commit()
    assert names(tmp_path) == ["scan.nrrd", "scan.ome.zarr"]
    assert content(final) == {"sub/chunk": "old", "top.json": "old"}
    assert (tmp_path / "scan.nrrd").is_dir()


def test_rollback_removes_new_directory_when_another_member_fails(tmp_path):
    final = tmp_path / "scan.ome.zarr"
    outputs = AtomicOutputSet()
    fill(outputs.add_directory(final), "new")
    outputs.add(tmp_path / "scan.nrrd").write(b"new nrrd")
    (tmp_path / "scan.nrrd").write_bytes(b"theirs")  # appears while the set is being written
    with pytest.raises(OutputExistsError, match="scan.nrrd"):
        outputs.commit()
    assert names(tmp_path) == ["scan.nrrd"]
    assert (tmp_path / "scan.nrrd").read_bytes() == b"theirs"


def test_failing_commit_callback_removes_the_tree(tmp_path):
    outputs = AtomicOutputSet()
    fill(outputs.add_directory(tmp_path / "scan.ome.zarr"), "new")

    def fail():
        raise ValueError("writer failed")

    outputs.on_commit(fail)
    with pytest.raises(ValueError, match="writer failed"):
        outputs.commit()
    assert names(tmp_path) == []


def test_fsync_commit_of_a_tree(tmp_path):
    with AtomicOutputSet(fsync=True) as outputs:
        fill(outputs.add_directory(tmp_path / "scan.ome.zarr"), "new")
    assert content(tmp_path / "scan.ome.zarr") == {"sub/chunk": "new", "top.json": "new"}


def test_remove_all_partials_removes_temporary_trees(tmp_path):
    outputs = AtomicOutputSet()
    temp = outputs.add_directory(tmp_path / "scan.ome.zarr")
    fill(temp, "new")
    assert temp in remove_all_partials()
    assert names(tmp_path) == []
    outputs.abort()


def test_replace_also_removes_a_previous_directory_output_all_or_nothing(tmp_path):
    old = tmp_path / "scan_RHO.ome.zarr"  # a directory output of an earlier set, not made again
    old.mkdir()
    fill(old, "old")
    outputs = AtomicOutputSet(overwrite=True, replace_also=[old])
    fill(outputs.add_directory(tmp_path / "scan_HU.ome.zarr"), "new")
    outputs.add(tmp_path / "scan.nrrd").write(b"new nrrd")
    (tmp_path / "scan.nrrd").mkdir()  # the file member cannot be placed: everything is put back
    with pytest.raises(OutputError):
        outputs.commit()
    assert names(tmp_path) == ["scan.nrrd", "scan_RHO.ome.zarr"]
    assert content(old) == {"sub/chunk": "old", "top.json": "old"}

    (tmp_path / "scan.nrrd").rmdir()
    with AtomicOutputSet(overwrite=True, replace_also=[old]) as outputs:
        fill(outputs.add_directory(tmp_path / "scan_HU.ome.zarr"), "new")
    assert names(tmp_path) == ["scan_HU.ome.zarr"]
