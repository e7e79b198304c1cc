"""`--output` of a plain scoring run is replaced whole, so it must never be a folder that holds anything else."""
import os

import pytest

from dinoar_ray.score import check_replaceable


def test_output_holding_the_source_other_files_or_the_cwd_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="contains the source"):
        check_replaceable(str(tmp_path / "work"), str(tmp_path / "work" / "imgs"))
    with pytest.raises(ValueError, match="contains the working directory"):
        check_replaceable(".", "s3://bucket/images")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"holds files that are not scores \(notes.txt\)"):
        check_replaceable(str(tmp_path / "out"), str(tmp_path / "imgs"))
    assert (tmp_path / "out" / "notes.txt").exists()
    # An earlier run's scores, or a folder that does not exist yet, may be replaced.
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "part-0.parquet").write_bytes(b"")
    check_replaceable(str(tmp_path / "scores"), str(tmp_path / "imgs"))
    check_replaceable(str(tmp_path / "new"), str(tmp_path / "imgs"))
    assert not os.path.exists(tmp_path / "new")
