import os

from dinoar_ray.demo import absolute_sqlite


def test_demo_prints_where_the_sqlite_store_really_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///mlflow.db") == f"sqlite:///{os.path.join(str(tmp_path), 'mlflow.db')}"
    assert absolute_sqlite("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    assert absolute_sqlite("http://mlflow:5000") == "http://mlflow:5000"
