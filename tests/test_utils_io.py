"""Atomic writes respect the umask (mkstemp alone would make every result 0600)."""

import os
import stat
import subprocess
import sys


def mode_written_under(umask: int, tmp_path) -> int:
    code = (
        "import os, sys; os.umask(int(sys.argv[2], 8)); from sparsesteer.utils import io; "
        "io.write_text(sys.argv[1], 'x'); print(oct(os.stat(sys.argv[1]).st_mode & 0o777))"
    )
    path = tmp_path / f"f{umask:o}.json"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), f"{umask:o}"], capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip(), 8) == stat.S_IMODE(os.stat(path).st_mode)
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_umask_mode(tmp_path):
    assert mode_written_under(0o022, tmp_path) == 0o644
    assert mode_written_under(0o002, tmp_path) == 0o664
    assert mode_written_under(0o077, tmp_path) == 0o600
