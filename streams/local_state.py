"""A worker's local state (RocksDB tables, the dedup index) is trusted only after a clean stop.

A batch's state goes to RocksDB at once, and to the changelog in the background; both are
flushed before the source offsets are committed (see StreamsApp._chain_flush). A worker
killed in between leaves RocksDB *ahead* of its changelog: effects of records whose offsets
were never committed, which no other worker can restore. Restarted on the same folder, it
recovered only changelog records newer than its own, kept those effects, and counted the
records replayed from the committed offset as applied already (their event_ids in the
dedup index, their offsets under the users' watermarks): it committed past them, though
their effects were nowhere but on its disk. The next owner of the partition restored the
changelog without them, and every view of those users stayed short (issue 17).

So a clean stop leaves a mark, and a start without it discards the folder: Faust restores
every table from its changelog, which holds exactly what was committed or may be replayed.
It is what Kafka Streams does for exactly-once state after an unclean shutdown.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CLEAN_MARK = "stopped-cleanly"


def claim(datadir: Path) -> bool:
    """At a worker's start: keep the folder's state if its last worker stopped cleanly,
    discard it otherwise. Either way the mark is taken, so a crash of this run counts as
    unclean. Returns whether state was discarded."""
    mark = datadir / CLEAN_MARK
    if mark.exists():
        mark.unlink()
        return False
    if not datadir.exists() or not any(datadir.iterdir()):
        return False
    log.warning(
        "local state in %s was left by a worker that did not stop cleanly: discarded, "
        "restoring every table from its changelog",
        datadir,
    )
    for entry in datadir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return True


def mark_clean(datadir: Path) -> None:
    """After the last state write reached the changelog: the folder is whole."""
    if datadir.exists():
        (datadir / CLEAN_MARK).touch()
