"Atomic writes under a real crash: a process killed in the middle of a write leaves the old file intact."
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import torch
from sane_nb.core import atomic_write, load_tensors, save_tensors

WRITER = textwrap.dedent("""
    import sys, time
    from sane_nb.core import atomic_write
    with atomic_write(sys.argv[1]) as f:
        for _ in range(10_000):          # ~40 MB, slowly, so the parent can kill us halfway
            f.write(b"new!" * 1024)
            f.flush()
            time.sleep(0.001)
""")

def test_killed_writer_leaves_old_file(tmp_path):
    target = tmp_path/"zoo.json"
    target.write_bytes(b'{"old": true}')
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline = time.time() + 60
    tmp_files = []
    while time.time() < deadline:            # wait until the temporary file has real content
        tmp_files = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if tmp_files and tmp_files[0].stat().st_size > 100_000: break
        time.sleep(0.01)
    assert tmp_files, "the writer never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b'{"old": true}'
    assert all(p.name.startswith(".zoo.json.") for p in tmp_path.iterdir() if p != target)

def test_completed_write_replaces(tmp_path):
    target = tmp_path/"x.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as f: f.write(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]

def test_exception_keeps_old_tensors(tmp_path):
    path = tmp_path/"sd.safetensors"
    save_tensors({"w": torch.ones(3)}, path)
    try:
        with atomic_write(path) as f:
            f.write(b"garbage")
            raise KeyboardInterrupt
    except KeyboardInterrupt: pass
    assert torch.equal(load_tensors(path)["w"], torch.ones(3))
