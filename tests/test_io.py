"""Atomic writes: a file is either the old one or the whole new one, with no temp file left."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mmdlm.io import save_figure  # noqa: E402


def test_save_figure_writes_atomically_and_closes(tmp_path):
    path = tmp_path / "plot.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, path, dpi=50)
    assert path.read_bytes().startswith(b"\x89PNG") and list(tmp_path.iterdir()) == [path]
    assert not plt.fignum_exists(fig.number)
    before = path.read_bytes()

    def broken(target, dpi):  # rendering fails half-way through the file
        open(target, "wb").write(b"\x89PNG half")
        raise RuntimeError("renderer failed")

    fig, _ = plt.subplots()
    fig.savefig = broken
    with pytest.raises(RuntimeError, match="renderer failed"):
        save_figure(fig, path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    assert not plt.fignum_exists(fig.number)
