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


def test_tied_weights_are_saved_as_copies(tmp_path):
    "safetensors refuses tensors that share memory; save_tensors stores each copy and loads back equal tensors"
    import torch
    from torch import nn
    from sane_nb.core import save_tensors, load_tensors
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    sd = {**{f"a.{k}": v for k, v in a.state_dict().items()}, **{f"b.{k}": v for k, v in b.state_dict().items()}}
    save_tensors(sd, tmp_path/"t.safetensors")
    back = load_tensors(tmp_path/"t.safetensors")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_disk_full_is_one_line_and_resumes(tmp_path):
    "A full disk: one line naming the problem, nothing half-written that breaks loading, the rerun completes the zoo"
    import os, subprocess, sys
    from pathlib import Path
    import pytest
    mnt = tmp_path/"mnt"; mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        env = {**os.environ, "SANE_HOME": str(tmp_path/"home"), "OMP_NUM_THREADS": "1"}
        cmd = [str(Path(sys.executable).parent/"sane_zoo"), str(mnt/"zoo"), "--n_models", "12", "--epochs", "2", "--n_workers", "1"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert r.returncode != 0 and "Traceback" not in r.stderr and "No space left on device" in r.stderr, r.stderr[-300:]
        assert not [p for p in (mnt/"zoo").rglob("*.tmp")]
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        assert subprocess.run(cmd, capture_output=True, text=True, env=env).returncode == 0
        from sane_nb.zoo import load_zoo
        assert len(load_zoo(mnt/"zoo")) == 12*3
    finally: subprocess.run(["umount", str(mnt)], capture_output=True)
