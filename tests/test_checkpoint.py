"""A file that is not a protege checkpoint is named as such, with the reason, whatever it holds."""

import zipfile

import pytest
import torch

from protege.policies.checkpoint import CheckpointError, read_checkpoint


class Thing:
    pass


def test_not_a_checkpoint_says_why(tmp_path):
    cases = {}
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty.pt"] = "the file is empty"
    (tmp_path / "random.pt").write_bytes(bytes(range(7, 255)) * 20)
    cases["random.pt"] = "not a file torch.save wrote (those are zip archives; this one starts with the bytes 07 08 09 0a)"
    with zipfile.ZipFile(tmp_path / "other.zip.pt", "w") as z:
        z.writestr("notes.txt", "x")
    cases["other.zip.pt"] = "a zip archive, but not one torch.save wrote (no data.pkl among ['notes.txt'])"
    torch.save({"format_version": 1, "state_dict": {"w": torch.zeros(1000)}}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    cases["cut.pt"] = "a damaged zip archive"
    torch.save({"thing": Thing()}, tmp_path / "object.pt")
    cases["object.pt"] = "a Python object of class test_checkpoint.Thing"
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases["list.pt"] = "not a protege checkpoint"
    for name, why in cases.items():
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(tmp_path / name)
        assert f"{tmp_path / name}: not a protege checkpoint" in str(e.value) and why in str(e.value), (name, str(e.value))
