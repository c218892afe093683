"""acp.owned: acp replaces or removes only the files its acp-owned.json lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acp.errors import InputError
from acp.owned import (
    OWNED_NAME,
    read_owned,
    remove_files,
    remove_owned,
    replace_owned,
    temp_folder,
    write_owned,
)
from acp.paths import UnsafePathError

WHO = "acp test"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _build(output: Path, files: dict[str, str]) -> Path:
    work = temp_folder(output)
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    return work


def test_a_folder_is_acp_s_only_by_its_list(tmp_path: Path) -> None:
    assert read_owned(tmp_path / "new", WHO) is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".x.json.acp-host-1-abcdefgh.tmp").write_text("")  # a killed write
    assert read_owned(tmp_path / "empty", WHO) is None
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "data.yaml").write_text("names: {}")
    with pytest.raises(InputError, match=f"did not write \\(no {OWNED_NAME}"):
        read_owned(folder, WHO)
    head = '{"format": 1, "written_by": '
    for content, error in [
        ("{", "unreadable"),
        (head + '"acp test", "files": 3}', "not a list of files"),
        (head + '"acp other", "files": []}', "written by 'acp other'"),
        (head + '"acp test", "files": ["../thesis.tex"]}', "climbs out"),
        (head + '"acp test", "files": ["/etc/passwd"]}', "absolute"),
    ]:
        (folder / OWNED_NAME).write_text(content)
        with pytest.raises(InputError, match=error) as raised:
            read_owned(folder, WHO)
        assert "../" not in content or raised.type is UnsafePathError
    write_owned(folder, WHO, ["data.yaml"])
    assert read_owned(folder, WHO) == {"data.yaml"}


def test_remove_files_removes_what_is_listed_and_nothing_beyond(tmp_path: Path) -> None:
    folder, outside = tmp_path / "out", tmp_path / "elsewhere"
    (folder / "images" / "train").mkdir(parents=True)
    outside.mkdir()
    (outside / "a.png").write_text("the user's image")
    (folder / "images" / "train" / "a.png").symlink_to(outside / "a.png")  # an export's link
    (folder / "images" / "train" / "b.png").write_text("acp's")
    (folder / "images" / "mine.png").write_text("the user's, in acp's folder")
    (folder / "planted").symlink_to(outside, target_is_directory=True)  # a link on the way out
    (folder / "notes").mkdir()
    removed = remove_files(folder, ["images/train/a.png", "images/train/b.png", "planted/a.png", "notes",
                                    "../elsewhere/a.png", "images/gone.png"])
    assert removed == 2
    assert (outside / "a.png").read_text() == "the user's image"  # the link went, not its target
    assert not (folder / "images" / "train").exists()  # emptied: removed
    assert (folder / "images" / "mine.png").exists() and (folder / "notes").is_dir()


def test_remove_owned_and_a_replacement_keep_the_user_s_files(tmp_path: Path) -> None:
    output = tmp_path / "out"
    replace_owned(_build(output, {"a/1.txt": "one", "top.txt": "top"}), output, WHO, commit="top.txt")
    assert read_owned(output, WHO) == {"a/1.txt", "top.txt"}
    (output / "mine.txt").write_text("keep me")
    replace_owned(_build(output, {"a/2.txt": "two", "top.txt": "new top"}), output, WHO, commit="top.txt")
    assert _files(output) == {"a/2.txt": b"two", "top.txt": b"new top", "mine.txt": b"keep me",
                              OWNED_NAME: (output / OWNED_NAME).read_bytes()}
    assert json.loads((output / OWNED_NAME).read_text())["files"] == ["a/2.txt", "top.txt"]
    (output / "a" / "theirs.txt").write_text("theirs")
    work = _build(output, {"top.txt": "newer"})
    with pytest.raises(InputError, match=r"did not write among its own \(a/theirs\.txt\)"):
        replace_owned(work, output, WHO, commit="top.txt")
    assert (output / "top.txt").read_text() == "new top"
    assert remove_owned(output, WHO) == 2
    assert _files(output) == {"mine.txt": b"keep me", "a/theirs.txt": b"theirs"}
