"""Cases added for mutants of records.py that the other tests let survive (docs/testing.md):
the code version read from git, and the wandb mirror (with a stand-in wandb module)."""
import subprocess
import sys
from types import SimpleNamespace

import pytest

import records
from cli import UserError


def git(repo, *cmd):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *cmd],
                          capture_output=True, text=True, check=True).stdout.strip()


def fresh_version(monkeypatch, repo):
    monkeypatch.setattr(records, "_REPO", str(repo))
    monkeypatch.setattr(records, "_VERSION", [])
    return records.code_version()


def test_code_version_of_a_clean_and_a_dirty_checkout(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("not part of the version\n")
    assert fresh_version(monkeypatch, tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert fresh_version(monkeypatch, tmp_path) == {"commit": head, "dirty": True}
    # cached: later edits do not change what this process reports
    git(tmp_path, "commit", "-q", "-am", "two")
    assert records.code_version() == {"commit": head, "dirty": True}


def test_code_version_outside_git_and_without_git(tmp_path, monkeypatch):
    assert fresh_version(monkeypatch, tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert fresh_version(monkeypatch, tmp_path) == {"commit": None, "dirty": None}


class FakeWandb:
    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        if self.fail:
            raise self.fail
        return self

    def log(self, data):
        self.calls.append(("log", data))

    def finish(self):
        self.calls.append(("finish",))


RECORD = {"setting": "fullclass", "dataset": "Digits", "net": "SmallCNN", "method": "jit", "forget": "3",
          "seed": 1, "args": {"lr": 0.1}, "TestAcc": 90.5, "Epochs": 2, "ok": True, "note": "x"}


def test_mirror_to_wandb_sends_the_record(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    records.mirror_to_wandb(SimpleNamespace(wandb="offline"), RECORD, "r.jsonl")
    assert fake.calls == [("init", {"project": "jit-unlearning", "mode": "offline", "config": {"lr": 0.1},
                                    "name": "fullclass-Digits-SmallCNN-jit-3-s1"}),
                          ("log", {"seed": 1, "TestAcc": 90.5, "Epochs": 2}),  # numbers, not booleans
                          ("finish",)]
    fake.calls.clear()
    records.mirror_to_wandb(SimpleNamespace(wandb="disabled"), RECORD, "r.jsonl")
    assert fake.calls == []


def test_mirror_to_wandb_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError, match=r"^-wandb online/offline needs the wandb package \(pip install wandb\)$"):
        records.mirror_to_wandb(SimpleNamespace(wandb="online"), RECORD, "r.jsonl")


@pytest.mark.parametrize("error,line", [(RuntimeError("no key\nmore"), "RuntimeError: no key"),
                                        (ValueError(), "ValueError: ")])
def test_a_failing_mirror_is_one_warning_naming_the_file(monkeypatch, tmp_path, capsys, error, line):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=error))
    path = records.write(SimpleNamespace(wandb="online", results=str(tmp_path / "r.jsonl")), dict(RECORD))
    err = capsys.readouterr().err
    assert err == f"warning: the record is in {path}, but mirroring it to wandb failed: {line}\n"
    assert str(tmp_path) in str(path)


def test_code_version_of_a_repository_without_commits(tmp_path, monkeypatch):
    # git status works there but HEAD does not resolve: no version rather than half of one
    git(tmp_path, "init", "-q")
    assert fresh_version(monkeypatch, tmp_path) == {"commit": None, "dirty": None}


def test_recorded_finds_the_same_run_only(tmp_path):
    results = tmp_path / "r.jsonl"
    args = SimpleNamespace(results=str(results), seed=1, lr=0.1, workers=4, wandb="disabled")
    same = {"setting": "fullclass", "args": {"seed": 1, "lr": "0.1", "workers": 0, "gpu": True}, "TestAcc": 1.0}
    with open(results, "w") as f:
        f.write('["not a record"]\n{"setting": "fullclass", "args": "not a dict"}\n{"setting": "fullclass"}\n')
        f.write('{"setting": "fullclass", "args": {"seed": 2, "lr": 0.1}}\n')   # another seed
        f.write('{"setting": "subclass", "args": {"seed": 1, "lr": 0.1}}\n')    # another setting
    assert records.recorded(args, "fullclass") is None
    records.write(SimpleNamespace(results=str(results), wandb="disabled"), same)
    # flags that do not change the result (workers, gpu, results, wandb) are no part of the identity;
    # values compare as text
    assert records.recorded(args, "fullclass") == same
    assert records.recorded(args, "subclass") == {"setting": "subclass", "args": {"seed": 1, "lr": 0.1}}
    assert records.recorded(SimpleNamespace(results=str(tmp_path / "none.jsonl"), seed=1), "fullclass") is None
