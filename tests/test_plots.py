"""msg_ray.plots: loss/γ figures written as PNGs, input validation, and the causal running-mean smoother."""

from __future__ import annotations

import numpy as np
import pytest

from msg_ray import plots


def test_plots_write_nontrivial_pngs(tmp_path, make_history):
    msg, nomask = make_history(seed=0), make_history(seed=1)
    full = make_history(growths=(10_000,), seed=2)
    growths = {"msg": [100, 250], "nomask": [100, 250]}
    figures = {
        f"curves_{x}.png": plots.loss_curves(
            {"msg": msg, "nomask": nomask, "full": full}, growth_steps=growths, x=x, log_x=x == "flops"
        )
        for x in ("step", "wall", "flops")
    }
    figures["run.png"] = plots.loss_figure(msg, [100, 250])
    zoom = plots.growth_zoom({"msg": msg, "nomask": nomask}, growths, window=50)
    assert len(zoom.axes) == 2
    figures["zoom.png"] = zoom
    t = np.linspace(1, 100, 50)
    figures["gamma.png"] = plots.gamma_vs_time({"a": (t, -1 / t), "b": (t, -2 / t)}, log_y=True)
    for name, fig in figures.items():
        path = plots.save(fig, tmp_path / "figs" / name)
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000, name
    # growth lines are drawn at the growth's x position on the wall-clock axis
    fig = plots.loss_curves({"msg": msg}, growth_steps={"msg": [100]}, x="wall")
    vlines = [line for line in fig.axes[0].lines if len(set(line.get_xdata())) == 1]
    assert [line.get_xdata()[0] for line in vlines] == [pytest.approx(msg["wall_s"][100])]


def test_plots_reject_bad_input(make_history):
    with pytest.raises(ValueError, match="x: must be one of"):
        plots.loss_curves({"a": make_history()}, x="tokens")
    with pytest.raises(ValueError, match="missing 'train_loss'"):
        plots.loss_curves({"a": {"step": [0, 1]}})
    with pytest.raises(ValueError, match="histories"):
        plots.loss_curves({})
    with pytest.raises(ValueError, match="no run has a growth"):
        plots.growth_zoom({"a": make_history()}, {})


def test_smooth_is_an_unbiased_causal_running_mean():
    const = np.full(300, 4.2)
    np.testing.assert_allclose(plots.smooth(const), const)  # bias-corrected: no warm-up dip towards 0
    step = np.r_[np.zeros(150), np.ones(150)]
    out = plots.smooth(step)
    assert np.all(out[:150] == 0)  # causal: nothing before the jump sees it
    assert 0 < out[150] < out[160] < out[-1] < 1.0 + 1e-12 and out[-1] > 0.9  # lags, then converges
    noisy = 3.0 + np.random.default_rng(0).normal(0, 0.5, 600)
    assert plots.smooth(noisy)[100:].std() < 0.3 * noisy[100:].std()
    np.testing.assert_array_equal(plots.smooth(np.array([1.0, 5.0])), [1.0, 5.0])  # too short to smooth
