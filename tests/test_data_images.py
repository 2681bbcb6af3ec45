"""rehead.data.images: the files an image CSV lists, one reading for fit, predict and export's checks."""
from rehead.data.images import csv_images, listed_files
from tests.conftest import make_images


def test_listed_files_are_the_csvs_image_paths_as_a_fit_reads_them_and_never_raise(tmp_path):
    """export's guard read the CSV's path column itself (``_listed_files``), a second reading of what
    ``csv_images`` reads: the same files, relative to the CSV, but nothing checked and nothing refused."""
    make_images(tmp_path / "imgs", n=2)
    (tmp_path / "sub").mkdir()
    data = tmp_path / "sub" / "data.csv"
    data.write_text("img,label\n../imgs/red/red_0.jpg,red\n,blue\n../imgs/blue/blue_1.jpg,blue\n")
    want = [str(tmp_path / "imgs" / "red" / "red_0.jpg"), str(tmp_path / "imgs" / "blue" / "blue_1.jpg")]
    assert listed_files(data, "img") == want  # '..' normalised, the empty cell left out
    ok = tmp_path / "sub" / "ok.csv"
    ok.write_text("img\n../imgs/red/red_0.jpg\n../imgs/blue/blue_1.jpg\n")
    assert listed_files(ok, "img") == csv_images(ok, "img") == want
    data.write_text("img,label\n../imgs/gone.jpg,red\n")  # csv_images refuses a missing file; a check lists it
    assert listed_files(data, "img") == [str(tmp_path / "imgs" / "gone.jpg")]
    assert listed_files(data) == []  # no 'path' column: nothing listed
    assert listed_files(tmp_path / "none.csv") == []  # unreadable: the fit that reads it says why
