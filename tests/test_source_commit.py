import subprocess
from pathlib import Path

from draft_lightning.source_commit import source_commit


def git(folder: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=folder, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_commit_is_dirty_for_tracked_changes_anywhere_except_the_commands_own_outputs(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "package").mkdir()
    (tmp_path / "docs" / "report.md").write_text("report\n")
    (tmp_path / "package" / "code.py").write_text("x = 1\n")
    (tmp_path / "top.py").write_text("y = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    package = tmp_path / "package"

    assert source_commit(package) == head[:7]
    assert source_commit(package, length=40) == head
    (tmp_path / "untracked.py").write_text("z = 1\n")  # untracked files are not the code
    assert source_commit(package) == head[:7]

    # The command's own output does not mark it; a change outside the folder asked about
    # (the checkout's top) does.
    (tmp_path / "docs" / "report.md").write_text("regenerated\n")
    assert source_commit(package, not_changes=["docs/report.md"]) == head[:7]
    assert source_commit(package) == head[:7] + "-dirty"
    (tmp_path / "top.py").write_text("y = 2\n")
    assert source_commit(package, not_changes=["docs/report.md"]) == head[:7] + "-dirty"


def test_outside_a_checkout_there_is_no_commit(tmp_path: Path) -> None:
    assert source_commit(tmp_path) is None
