"""JSON Lines I/O: whole lines, torn tails, files without a final newline, file modes."""

from __future__ import annotations

import json
import stat

import pytest

from acp.jsonl import JsonlWriter, read_records, write_atomic


@pytest.mark.parametrize(
    ("content", "expected_ids", "after_writer"),
    [
        ('{"id": 1}\n{"id": 2}\n', [1, 2], '{"id": 1}\n{"id": 2}\n'),
        # A complete record that only lacks its newline (a hand-written file): it counts, and
        # a writer completes it rather than dropping it.
        ('{"id": 1}\n{"id": 2}', [1, 2], '{"id": 1}\n{"id": 2}\n'),
        # A line torn by a kill: ignored by readers, cut off by the writer.
        ('{"id": 1}\n{"id": 2, "na', [1], '{"id": 1}\n'),
        ('{"id": 1, "na', [], ""),
        ("", [], ""),
    ],
)
def test_readers_and_writers_agree_on_the_tail(tmp_path, content, expected_ids, after_writer):
    path = tmp_path / "records.jsonl"
    path.write_text(content)
    assert [r["id"] for _, r, _ in read_records(path)] == expected_ids
    with JsonlWriter(path) as writer:
        writer.write({"id": 9})
    assert path.read_text() == after_writer + '{"id":9}\n'
    assert [r["id"] for _, r, _ in read_records(path)] == [*expected_ids, 9]


def test_atomic_files_follow_the_umask(tmp_path):
    from acp.atomic import UMASK  # read once at import, as the process started with

    path = tmp_path / "out.json"
    write_atomic(path, json.dumps({"a": 1}))
    mode = stat.S_IMODE(path.stat().st_mode)
    # tempfile.mkstemp alone gives 0600 whatever the umask; a plain open() would give this.
    assert mode == 0o666 & ~UMASK, oct(mode)
    assert json.loads(path.read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_line_no_parser_can_read_is_a_bad_line_not_an_error(tmp_path):
    """An integer past Python's 4300 digits raises ValueError, not JSONDecodeError: each reader
    of a JSON Lines file sees it as a bad line, as it sees any other."""
    path = tmp_path / "records.jsonl"
    path.write_text('{"id": 1}\n{"id": ' + "9" * 5000 + '}\n{"id": 3}\n')
    assert [record and record["id"] for _, record, _ in read_records(path)] == [1, None, 3]
