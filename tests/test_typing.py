"""Results are typed for users: ``mypy --strict`` over user-style code
(tests/typing_user_code.py) whose ``assert_type`` checks fail on ``Any``.

A second run over a copy that asserts a wrong type proves the check can fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USER_CODE = ROOT / "tests" / "typing_user_code.py"



def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--config-file", str(ROOT / "pyproject.toml"), str(path)],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT), check=False)


def test_user_code_sees_typed_results(tmp_path: Path) -> None:
    proc = _mypy(USER_CODE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
    # The same check fails when a result would be Any, or another class.
    wrong = tmp_path / "typing_wrong.py"
    text = USER_CODE.read_text(encoding="utf-8")
    text = text.replace('assert_type(await ch.queue_purge("q"), spec.Queue.PurgeOk)',
                        'assert_type(await ch.queue_purge("q"), spec.Queue.DeclareOk)')
    text += "\n\ndef untyped(x: object) -> None:\n    from typing import Any, cast\n" \
            "    assert_type(cast(Any, x), int)\n"
    wrong.write_text(text, encoding="utf-8")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    proc = _mypy(wrong)
    assert proc.returncode == 1, proc.stdout
    assert 'Expression is of type "PurgeOk", not "DeclareOk"' in proc.stdout
    assert 'Expression is of type "Any", not "int"' in proc.stdout
