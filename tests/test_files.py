"""The writers' shared helpers: two writers of one new target, outputs inside inputs, run-folder locks."""

import pytest

from pixdeploy.errors import PixdeployError
from pixdeploy.files import check_not_inside, staged_dir, try_lock


def test_a_second_writer_of_the_same_new_target_does_not_replace_the_first(tmp_path):
    final = tmp_path / "bundle"
    with pytest.raises(PixdeployError, match="was written by another process while this one ran; it is kept"):
        with staged_dir(final) as tmp:
            (tmp / "mine").write_text("mine")
            final.mkdir()  # another export to the same new -o finished first
            (final / "theirs").write_text("theirs")
    assert [p.name for p in final.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # nothing of this writer left behind


def test_outputs_inside_inputs_are_refused_however_the_path_is_spelled(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (tmp_path / "link").symlink_to(bundle)
    for out in (bundle / "x.npy", bundle, tmp_path / "link" / "x.npy", bundle / ".." / "bundle" / "y"):
        with pytest.raises(PixdeployError, match="which this command reads"):
            check_not_inside(out, bundle)
    with pytest.raises(PixdeployError, match="holds .*bundle"):
        check_not_inside(tmp_path, bundle)
    check_not_inside(tmp_path / "elsewhere.npy", bundle)


def test_a_held_lock_refuses_instead_of_waiting(tmp_path):
    with try_lock(tmp_path, "busy"):
        with pytest.raises(PixdeployError, match="busy"):
            with try_lock(tmp_path, "busy"):
                pass
    with try_lock(tmp_path, "busy"):  # released
        pass
