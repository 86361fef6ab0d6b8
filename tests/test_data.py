"""Stage 1 data: the fixed digits split, the IDX reader on files of the real format, and its errors."""
import gzip
import numpy as np
import pytest
import torch

from sane_nb.data import load_dataset, load_digits, load_idx_dataset, read_idx, write_idx


def test_digits_split_is_fixed_and_normalised():
    a, b = load_digits(), load_digits.__wrapped__()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert abs(a.x_train.mean().item()) < 1e-5 and abs(a.x_train.std().item() - 1) < 1e-3
    assert load_digits(seed=1).y_test.tolist() != a.y_test.tolist()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(rng.integers(0, 256, (n, 28, 28)), tmp_path/f"{split}-images-idx3-ubyte{ext}")
        write_idx(rng.integers(0, 10, n), tmp_path/f"{split}-labels-idx1-ubyte{ext}")
    d = load_idx_dataset("mnist", tmp_path)
    raw = read_idx(tmp_path/f"train-images-idx3-ubyte{ext}")
    assert d.x_train.shape == (30, 1, 28, 28) and d.in_ch == 1
    torch.testing.assert_close(d.x_train[:, 0] * d.std + d.mean, torch.tensor(raw / 255., dtype=torch.float32))
    assert load_dataset("mnist", tmp_path).y_test.shape == (10,)


def test_idx_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*dataset-fashion-mnist"):
        load_idx_dataset("fashion_mnist", tmp_path)
    bad = tmp_path/"bad.gz"; bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.gz"): read_idx(bad)
    (tmp_path/"magic").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"): read_idx(tmp_path/"magic")
    write_idx(np.zeros((4, 2), np.uint8), tmp_path/"short")
    (tmp_path/"short").write_bytes((tmp_path/"short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="short.*holds 5"): read_idx(tmp_path/"short")
    for split, n in (("train", 3), ("t10k", 2)):
        write_idx(np.zeros((n, 28, 28)), tmp_path/f"{split}-images-idx3-ubyte")
        write_idx(np.zeros(n + 1), tmp_path/f"{split}-labels-idx1-ubyte")
    with pytest.raises(ValueError, match="differ in number"): load_idx_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="cifar"): load_dataset("cifar10")
