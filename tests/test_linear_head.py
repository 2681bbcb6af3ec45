"""fit_linear_head: the optimum of softmax + L2 (equal to scikit-learn's LogisticRegression at
the same C), C chosen by CV on the training rows alone (the same scores as
LogisticRegressionCV on the same folds), the standardisation folded into a plain nn.Linear."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

from rehead.train.linear_head import fit_linear_head


def blobs(n=300, d=20, k=3, noise=2.0, seed=0, scale=True):
    """Correlated, badly scaled features with offsets; labels from a noisy linear rule."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    if scale:
        x = x * rng.uniform(0.01, 50, size=d) + rng.uniform(-20, 20, size=d)
    y = (x[:, :4] @ rng.normal(size=(4, k)) / (np.abs(x[:, :4]).mean() + 1e-9) + noise * rng.normal(size=(n, k))).argmax(1)
    return x.astype(np.float32), y


def sklearn_pipe(x, y, C, **kw):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-8, max_iter=5000, **kw)).fit(
        x.astype(np.float64), y)


def probs(linear, x):
    with torch.no_grad():
        return torch.softmax(linear(torch.as_tensor(x, dtype=torch.float32)).double(), 1).numpy()


@pytest.mark.parametrize("C,k", [(0.01, 3), (1.0, 3), (30.0, 3), (0.01, 2), (3.0, 2)])
def test_optimum_equals_sklearn_at_the_same_C(C, k):
    x, y = blobs(k=k)
    xt, _ = blobs(seed=1)  # raw held-out rows: the folded head equals standardise-then-linear on them
    lin, info = fit_linear_head(x, y, k, C=C)
    assert isinstance(lin, torch.nn.Linear) and lin.weight.shape == (k, 20)
    assert info["converged"] and info["grad_norm"] < 1e-5 and info["folds"] == 0 and info["C"] == C
    sk = sklearn_pipe(x, y, C)
    np.testing.assert_allclose(probs(lin, xt), sk.predict_proba(xt.astype(np.float64)), atol=2e-3)
    # the logits themselves, up to the softmax's free constant per row (both centre it anyway)
    with torch.no_grad():
        ours = lin(torch.from_numpy(xt)).double().numpy()
    theirs = sk.decision_function(xt.astype(np.float64))
    if k == 2:  # scikit-learn: one logit, the second class's minus the first's
        theirs = np.stack([-theirs / 2, theirs / 2], 1)
    np.testing.assert_allclose(ours - ours.mean(1, keepdims=True), theirs - theirs.mean(1, keepdims=True),
                               atol=5e-3 * max(1.0, np.abs(theirs).max()))


def test_folded_standardisation_is_standardise_then_linear():
    """The returned layer on raw features = a linear layer on train-standardised features."""
    x, y = blobs(seed=3)
    lin, _ = fit_linear_head(x, y, 3, C=1.0)
    x64 = x.astype(np.float64)
    mean, std = x64.mean(0), x64.std(0)
    w_std = lin.weight.detach().double().numpy() * std  # weights on standardised features
    b_std = lin.bias.detach().double().numpy() + (mean / std) @ w_std.T
    xt = blobs(seed=4)[0].astype(np.float64)
    with torch.no_grad():
        raw = lin(torch.from_numpy(xt).float()).double().numpy()
    np.testing.assert_allclose(raw, ((xt - mean) / std) @ w_std.T + b_std, rtol=1e-4, atol=1e-3)


def test_separable_data_reaches_the_optimum_at_the_chosen_C():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    x = rng.normal(size=(120, 8)) + 6.0 * y[:, None]  # far apart: separable
    lin, info = fit_linear_head(x, y)
    assert info["converged"] and info["grad_norm"] < 1e-5
    assert (probs(lin, x).argmax(1) == y).all()
    assert info["C"] in [r["C"] for r in info["cv"]]
    # the chosen C has the best mean held-out log-loss of those tried
    assert info["C"] == min(info["cv"], key=lambda r: (r["log_loss"], r["C"]))["C"]


@pytest.mark.parametrize("k", [2, 3])
def test_cv_scores_equal_LogisticRegressionCV_on_the_same_folds(k):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    x, y = blobs(n=240, d=12, k=k, seed=5)
    cs = np.logspace(-3, 1, 5)
    lin, info = fit_linear_head(x, y, k, cs=cs, patience=0, cv_tol=1e-6)
    xs = StandardScaler().fit_transform(x.astype(np.float64))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9's notices about 1.10 defaults
        ref = LogisticRegressionCV(Cs=cs, cv=cv, scoring="neg_log_loss", tol=1e-8, max_iter=5000).fit(xs, y)
    ref_loss = -np.asarray(next(iter(ref.scores_.values()))).mean(0)  # (Cs,)
    ours = np.array([r["log_loss"] for r in info["cv"]])
    np.testing.assert_allclose(ours, ref_loss, rtol=1e-3, atol=1e-4)
    assert info["C"] == pytest.approx(float(ref.C_[0]))


def test_only_training_rows_reach_the_solver():
    """The function takes the training split only; CV holds out each training row exactly once."""
    params = inspect.signature(fit_linear_head).parameters
    assert [p for p in params if params[p].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD] == \
        ["x_train", "y_train", "n_classes"]
    x, y = blobs(n=203, seed=6)
    _, info = fit_linear_head(x, y, 3, folds=4)
    assert info["folds"] == 4 and sum(info["held_out_sizes"]) == 203
    lin_a, _ = fit_linear_head(x, y, 3, folds=4)
    lin_b, _ = fit_linear_head(x, y, 3, folds=4)
    assert torch.equal(lin_a.weight, lin_b.weight)  # deterministic (seeded folds)


def test_many_rows_cross_validate_C_on_a_stratified_subset_and_fit_on_all():
    """Past ``cv_rows`` training rows, C is chosen on a seeded stratified subset of that size;
    the returned head is still the optimum on every row at that C."""
    from rehead.train.linear_head import _cv_subset
    x, y = blobs(n=900, k=3, seed=8)
    lin, info = fit_linear_head(x, y, 3, cv_rows=300)
    assert info["cv_rows"] == 300 and sum(info["held_out_sizes"]) == 300
    same, _ = fit_linear_head(x, y, 3, C=info["C"])
    np.testing.assert_allclose(probs(lin, x), probs(same, x), atol=2e-3)
    _, every = fit_linear_head(x, y, 3, cv_rows=None)
    assert "cv_rows" not in every and sum(every["held_out_sizes"]) == 900
    sub = _cv_subset(torch.as_tensor(y), 3, 300, seed=0).numpy()
    assert len(np.unique(sub)) == 300  # distinct rows, each class in its share of the whole
    np.testing.assert_allclose(np.bincount(y[sub], minlength=3), np.bincount(y, minlength=3) / 3, atol=1)
    assert np.array_equal(sub, _cv_subset(torch.as_tensor(y), 3, 300, seed=0).numpy())  # seeded


def test_two_classes_and_accuracy_scoring():
    x, y = blobs(k=2, seed=7)
    lin, info = fit_linear_head(x, y, scoring="accuracy")
    assert lin.out_features == 2 and info["scoring"] == "accuracy"
    best = max(info["cv"], key=lambda r: (r["accuracy"], -r["C"]))
    assert info["C"] == best["C"]
    with pytest.raises(ValueError, match="scoring"):
        fit_linear_head(x, y, scoring="f1")


def test_few_samples_reduce_the_folds():
    x, y = blobs(n=200, seed=8)
    keep = np.flatnonzero(y != 2)
    x3, y3 = np.concatenate([x[keep], x[y == 2][:3]]), np.concatenate([y[keep], [2, 2, 2]])
    lin, info = fit_linear_head(x3, y3, 3)
    assert info["folds"] == 3 and "smallest class has 3" in info["folds_note"]
    # a class with a single sample is never held out; the others still cross-validate
    x1, y1 = np.concatenate([x[keep], x[y == 2][:1]]), np.concatenate([y[keep], [2]])
    lin, info = fit_linear_head(x1, y1, 3)
    assert info["folds"] == 5 and "single sample" in info["folds_note"]
    assert sum(info["held_out_sizes"]) == len(y1) - 1
    p1 = probs(lin, x1)
    assert p1[-1, 2] > 3 * p1[:-1, 2].mean()  # it is learnt from its one sample
    # every class a single sample: no CV, C = 1
    lin, info = fit_linear_head(x[:3], np.array([0, 1, 2]), 3)
    assert info["folds"] == 0 and info["C"] == 1.0 and "no cross-validation" in info["folds_note"]


def test_absent_class_and_errors():
    x, y = blobs(k=3, seed=9)
    lin, info = fit_linear_head(x, y, 5, C=1.0)
    assert lin.out_features == 5 and info["absent_classes"] == [3, 4]
    assert (lin.weight[3:] == 0).all() and (probs(lin, x)[:, 3:] < 1e-6).all()
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_head(x, np.zeros(len(x), dtype=int))
    with pytest.raises(ValueError, match="labels"):
        fit_linear_head(x, y, 2)


def test_class_weight_balanced_equals_sklearn():
    x, y = blobs(seed=10)
    keep = np.flatnonzero((y != 1) | (np.arange(len(y)) % 5 == 0))  # class 1 rare
    x, y = x[keep], y[keep]
    lin, info = fit_linear_head(x, y, 3, C=0.5, class_weight="balanced")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = sklearn_pipe(x, y, 0.5, class_weight="balanced")
    np.testing.assert_allclose(probs(lin, x), sk.predict_proba(x.astype(np.float64)), atol=2e-3)


def test_tiny_but_real_and_constant_features():
    """Standardisation as StandardScaler's: a column spread at 1e-33 (MiniLM's pooled features
    have such columns, and they carry label signal) is used; a constant one gets weight 0. A head
    that will be fine-tuned (``min_relative_std``) treats the 1e-33 column as constant instead: its
    folded weight would be ~1e31, which fine-tuning cannot start from."""
    x, y = blobs(k=2, seed=11)
    x = x.astype(np.float64)
    x[:, 0] *= 1e-33
    x[:, 5] = 7.0
    lin, info = fit_linear_head(x, y, 2, C=1.0)
    assert torch.isfinite(lin.weight).all() and (lin.weight[:, 5].abs() < 1e-8).all()
    sk = sklearn_pipe(x, y, 1.0)
    np.testing.assert_allclose(probs(lin, x), sk.predict_proba(x), atol=2e-3)
    without, _ = fit_linear_head(np.delete(x, 0, 1), y, 2, C=1.0)
    assert np.abs(probs(lin, x) - probs(without, np.delete(x, 0, 1))).max() > 0.01  # column 0 matters
    stable, _ = fit_linear_head(x, y, 2, C=1.0, min_relative_std=1e-7)
    assert (stable.weight[:, [0, 5]].abs() < 1e-8).all() and stable.weight.abs().max() < 1e7
    np.testing.assert_allclose(probs(stable, x), probs(without, np.delete(x, 0, 1)), atol=2e-3)

def test_global_scaling_is_the_raw_feature_probe_and_the_loop_lets_cv_choose():
    """``scaling="global"``: one scale for every column (columns keep their relative size), the same
    optimum as scikit-learn on features centred and divided by one number."""
    from sklearn.linear_model import LogisticRegression
    x, y = blobs(k=3, seed=4)
    x64 = x.astype(np.float64)
    s = np.sqrt(x64.var(0).mean())
    lin, info = fit_linear_head(x, y, 3, C=1.0, scaling="global")
    sk = LogisticRegression(C=1.0, tol=1e-8, max_iter=5000).fit((x64 - x64.mean(0)) / s, y)
    np.testing.assert_allclose(probs(lin, x), sk.predict_proba((x64 - x64.mean(0)) / s), atol=2e-3)
    assert info["scaling"] == "global"
    with pytest.raises(ValueError, match="scaling"):
        fit_linear_head(x, y, 3, C=1.0, scaling="rows")
    # "auto" (what the loop asks for): both scalings cross-validated on train, the better CV
    # log-loss solved to the end, the same head as asking for that scaling alone.
    x[:, 0] *= 1e-3  # a faint but informative column: the two scalings now differ
    x[:, 0] += 1e-3 * y
    auto, ai = fit_linear_head(x, y, 3, scaling="auto")
    seen = ai["scalings"]
    assert set(seen) == {"column", "global"}
    chosen = min(seen, key=lambda sc: seen[sc]["log_loss"])
    assert ai["scaling"] == chosen and seen["column"]["log_loss"] != seen["global"]["log_loss"]
    alone, _ = fit_linear_head(x, y, 3, scaling=chosen)
    np.testing.assert_allclose(probs(auto, x), probs(alone, x), atol=1e-5)


def test_solved_task_heads_take_one_scale_for_all_where_faint_columns_are_noise():
    """Regression and multilabel heads standardised every column: image features nearly constant on train
    (std ~1e-6) met a larger value on one new image, and a ridge head predicted 86,538 for a digit worth
    8,000 (test R^2 -11; one scale for all gave +0.61). The training rows' CV error now chooses the scaling,
    as the multiclass solver's does, and keeps per-column scaling where every column carries signal."""
    from rehead.train.task_heads import fit_multilabel_head, fit_ridge_head
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(60, 4))
    x = np.hstack([signal, 1e-6 * rng.normal(size=(60, 200))])
    y = signal @ np.array([1.0, -2.0, 0.5, 1.0]) + 0.1 * rng.normal(size=60)
    ml = np.stack([y > 0, signal[:, 1] > 0], 1).astype(float)
    far = x[:1].copy()
    far[0, 10] = 0.01  # one faint column far from its training values
    for solve, target in ((fit_ridge_head, y), (fit_multilabel_head, ml)):
        head, info = solve(x, target)
        assert info["scaling"] == "global", solve.__name__
        with torch.no_grad():
            moved = (head(torch.as_tensor(far, dtype=torch.float32))
                     - head(torch.as_tensor(x[:1], dtype=torch.float32))).abs().max().item()
        assert moved < 0.5, (solve.__name__, moved)
        assert solve(signal * np.array([1e3, 1.0, 1e-3, 1.0]), target)[1]["scaling"] == "column", solve.__name__


def test_features_constant_on_every_row_give_the_class_priors_not_a_crash():
    """`fit --strategy extract` (and probe) at a cut whose features are the same for every sample failed
    in the solver with "cannot reshape tensor of 0 elements": the head is now the biases alone."""
    x = np.full((10, 5), 0.3, dtype=np.float32)
    y = np.array([0] * 6 + [1] * 4)
    head, info = fit_linear_head(x, y, 2)
    with torch.no_grad():
        p = torch.softmax(head(torch.from_numpy(x)), 1)
    assert torch.allclose(p[0], torch.tensor([0.6, 0.4]), atol=0.02) and float(head.weight.detach().abs().max()) == 0.0
