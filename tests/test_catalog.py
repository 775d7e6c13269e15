"""Where the shipped data is found: the board catalogue (targets/) and the tuned databases
(schedules/<board>/), each searched in the user's folder first ($TVM_QPLUGIN_TARGETS,
$TVM_QPLUGIN_SCHEDULES), then in the folder shipped with the package (tvm_qplugin/_catalog,
links to the top-level folders; tests/test_wheel.py checks the installed wheel)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tvm_qplugin._catalog import shipped_dir
from tvm_qplugin.targets import get_board, schedule_dirs, target_dirs, tuning_db_dir

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_folders_are_this_checkouts_top_level_ones(monkeypatch):
    monkeypatch.delenv("TVM_QPLUGIN_TARGETS", raising=False)
    monkeypatch.delenv("TVM_QPLUGIN_SCHEDULES", raising=False)
    assert shipped_dir("targets") == (ROOT / "targets").resolve()
    assert shipped_dir("schedules") == (ROOT / "schedules").resolve()
    assert target_dirs() == [shipped_dir("targets")]
    assert schedule_dirs() == [shipped_dir("schedules")]
    assert Path(get_board("x86-host").path).parent == shipped_dir("targets")
    with pytest.raises(ValueError, match="zoo"):
        shipped_dir("zoo")


def test_user_folders_come_first(tmp_path, monkeypatch):
    boards, dbs = tmp_path / "boards", tmp_path / "dbs"
    boards.mkdir()
    (dbs / "x86-host").mkdir(parents=True)
    monkeypatch.setenv("TVM_QPLUGIN_TARGETS", str(boards))
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(dbs))
    assert target_dirs() == [boards, shipped_dir("targets")]
    assert schedule_dirs() == [dbs, shipped_dir("schedules")]
    assert tuning_db_dir("x86-host") == dbs / "x86-host"


def test_no_database_for_a_board_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path / "does-not-exist"))
    assert schedule_dirs() == [shipped_dir("schedules")]
    assert tuning_db_dir("no-such-board") is None
