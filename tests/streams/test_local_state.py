"""A worker's folder keeps its state only when its last worker stopped cleanly."""

from __future__ import annotations

from pathlib import Path

from keel.streams.local_state import CLEAN_MARK, claim, mark_clean


def _state(datadir: Path) -> Path:
    table = datadir / "v1" / "tables" / "user_activity-3.db"
    table.mkdir(parents=True)
    (table / "000001.log").write_bytes(b"written, never on the changelog")
    return table


def test_state_left_by_a_killed_worker_is_discarded(tmp_path: Path) -> None:
    table = _state(tmp_path)
    (tmp_path / "dedup-index").mkdir()
    assert claim(tmp_path) is True
    assert not table.exists() and list(tmp_path.iterdir()) == []


def test_state_of_a_clean_stop_is_kept_and_the_mark_taken(tmp_path: Path) -> None:
    table = _state(tmp_path)
    mark_clean(tmp_path)
    assert claim(tmp_path) is False
    assert table.exists() and not (tmp_path / CLEAN_MARK).exists()
    # This run is killed before it stops: its state does not survive the next start.
    assert claim(tmp_path) is True and not table.exists()


def test_a_fresh_or_empty_folder_has_nothing_to_discard(tmp_path: Path) -> None:
    assert claim(tmp_path / "new") is False
    assert claim(tmp_path) is False
