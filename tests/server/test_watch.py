"""watch.py: what counts as a change, including the kubelet's `..data` symlink swap."""

from __future__ import annotations

import os
from pathlib import Path

from webhook.serve.watch import Watch, signature

from .volume import AtomicVolume


def test_signature_follows_symlinks_and_is_none_when_missing(tmp_path: Path) -> None:
    target = tmp_path / "a"
    link = tmp_path / "link"
    assert signature(link) is None
    target.write_text("x")
    link.symlink_to(target)
    assert signature(link) == signature(target)


def test_watch_sees_a_configmap_symlink_swap(tmp_path: Path) -> None:
    volume = AtomicVolume(tmp_path / "config")
    volume.write({"policy.yaml": b"a: 1\n"})
    calls: list[bytes] = []
    watch = Watch("policy", (volume.path("policy.yaml"),), lambda: calls.append(b""))
    assert watch.poll() is False
    volume.write({"policy.yaml": b"a: 1\n"})  # same bytes, new file: still a change
    assert watch.poll() is True
    assert watch.poll() is False
    assert len(calls) == 1


def test_watch_sees_an_in_place_rewrite_and_a_rename_over(tmp_path: Path) -> None:
    path = tmp_path / "tls.crt"
    path.write_text("one")
    calls: list[int] = []
    watch = Watch("certificate", (path,), lambda: calls.append(1))
    path.write_text("two, longer")
    assert watch.poll() is True
    (tmp_path / "new").write_text("three")
    os.replace(tmp_path / "new", path)
    assert watch.poll() is True
    assert len(calls) == 2


def test_watch_looks_again_when_files_change_while_being_read(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("a")
    seen: list[str] = []

    def reload() -> None:
        seen.append(path.read_text())
        if len(seen) == 1:
            path.write_text("written meanwhile")  # a writer still at work

    watch = Watch("policy", (path,), reload)
    path.write_text("bb")
    assert watch.poll() is True
    assert watch.poll() is True  # the change during the first reload is not lost
    assert seen == ["bb", "written meanwhile"]
    assert watch.poll() is False


def test_missing_file_is_a_change_and_so_is_its_return(tmp_path: Path) -> None:
    path = tmp_path / "tls.key"
    path.write_text("k")
    calls: list[int] = []
    watch = Watch("certificate", (path,), lambda: calls.append(1))
    path.unlink()
    assert watch.poll() is True
    path.write_text("k2")
    assert watch.poll() is True
    assert len(calls) == 2
