"""benchmarks/vlm_brightness_response.py: the brightness answer's response to a real
brightening, and its one-line error on a model folder that is not one."""
import pytest

from benchmarks import vlm_brightness_response as bench


def test_the_shipped_model_scores_a_brightened_photo_higher_and_its_gradient_agrees():
    images = bench.resized(bench.HELD_OUT, 64)
    for cal in ("pmi_null", "none"):
        m = bench.measure("tiny-vlm-photo", cal, images)
        assert 0.0 < m["score"] < 1.0
        assert m["slope_x1.1"] > 0.3 and m["slope_gamma"] > 0.3     # brighter -> higher score
        assert m["d_offset"] > 0.1                                    # and the gradient says so
        assert 0.0 < m["within_patch"] < 1.0 and m["digit_sd"] > 0.0


def test_a_folder_without_a_model_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--model_id", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("benchmarks/vlm_brightness_response.py: error: argument --model_id:")
    assert "neither a shipped VLM name" in err and str(tmp_path) in err
