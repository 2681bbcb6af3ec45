"""Text: stages of HF encoders/decoders, the text data pipeline, classification strategies,
domain adaptation (`adapt`), GloVe vectors. Tiny BERT / GPT-2 built here, offline."""
from __future__ import annotations

import csv
import json
import logging
import random

import pytest
import torch

from rehead import zoo
from rehead.data import DataError, load_dataset
from tests.conftest import shared_dataset

POS = ["good", "great", "excellent", "wonderful", "superb"]
NEG = ["bad", "awful", "terrible", "horrible", "dreadful"]
FILL = ["the", "movie", "was", "really", "quite", "plot", "acting", "film", "story", "overall"]


def sentence(rng, words):
    s = rng.sample(FILL, 4) + [rng.choice(words)]
    rng.shuffle(s)
    return " ".join(s)


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def sentiment_rows(n, seed):
    rng = random.Random(seed)
    return [(sentence(rng, POS if i % 2 else NEG), "pos" if i % 2 else "neg") for i in range(n)]


@pytest.fixture
def sentiment_folder(tmp_path):
    d = tmp_path / "sent"
    d.mkdir()
    write_csv(d / "train.csv", sentiment_rows(40, 0))
    write_csv(d / "test.csv", sentiment_rows(16, 1))
    return d


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 causal LM with a 120-token BPE tokenizer trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_gpt2")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [s for s, _ in sentiment_rows(200, 5)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "<unk>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    cfg = GPT2Config(vocab_size=len(fast), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    fast.save_pretrained(d)
    return d


# -- backbones -------------------------------------------------------------------------------
def test_minilm_through_stages_equals_sentence_transformers():
    """packaged:minilm's features are sentence-transformers' Pooling output (mean over the mask),
    exactly; its card then L2-normalises (modules.json: Normalize), which rehead applies only with
    ?normalize=1 (a head follows; rehead's features and caches have always been the Pooling output)."""
    from sentence_transformers import SentenceTransformer
    from rehead.zoo.hf import minilm_path
    bb = zoo.load("packaged:minilm").eval()
    assert bb.modality == "text" and bb.stage_names == ["embeddings"] + [f"layer{i}" for i in range(6)]
    assert bb.data_config["max_length"] == 256 and bb.data_config["pooling"] == "mean"
    assert "normalize" not in bb.data_config  # the data_config (a cache key) is what it was
    texts = ["Operating profit rose to EUR 13.1 mn", "short", "A longer sentence, padded against the short one."]
    st = SentenceTransformer(minilm_path(), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    x = bb.tokenize(texts)
    with torch.inference_mode():
        ours = bb(x)
        pooled = st[1](st[0](dict(x)))["sentence_embedding"]
    assert torch.allclose(ours, pooled, atol=1e-5)
    ref = torch.from_numpy(st.encode(texts))
    assert torch.allclose(torch.nn.functional.normalize(ours, dim=1), ref, atol=1e-5)
    normed = zoo.load(f"hf:{minilm_path()}?normalize=1").eval()
    with torch.inference_mode():
        assert torch.allclose(normed(x), ref, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tiny_gpt2_dir):
    """A 2-layer Llama causal LM (rotary positions, RMSNorm, grouped KV heads), GPT-2's tiny tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("which", ["bert", "gpt2", "llama"])
def test_stages_reproduce_the_hf_model_with_padding(which, tiny_bert_dir, tiny_gpt2_dir, tiny_llama_dir):
    """Stage by stage equals the model's own forward, padded batches included (masks right)."""
    from transformers import AutoModel
    d = {"bert": tiny_bert_dir, "gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[which]
    bb = zoo.load(f"hf:{d}").eval()
    ref = AutoModel.from_pretrained(d).eval()
    inputs = bb.tokenize(["the plot was good", "awful", "the film was quite really terrible overall"])
    assert (inputs["attention_mask"] == 0).any()
    with torch.inference_mode():
        state = bb.begin(inputs)
        for i in range(len(bb)):
            state = bb.run_stage(i, state)
        want = ref(**inputs).last_hidden_state
    m = inputs["attention_mask"].bool()
    assert torch.allclose(state[0][m], want[m], atol=1e-5)
    assert bb.stage_names[-1] == ("layer1" if which == "bert" else "norm")
    assert len(bb) == 3 + (which != "bert")  # embeddings, two blocks (+ the decoders' final norm)
    # cut keeps the tokenizer; features at several cuts come from one pass
    feats = bb.forward_cuts(inputs, [1, 2])
    assert feats[1].shape == feats[2].shape == (3, 32)
    assert bb.cut(2).tokenize(["x"])["input_ids"].shape[0] == 1


def test_hf_offline_error_says_how_to_use_a_local_dir(monkeypatch):
    import transformers
    def boom(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", boom)
    with pytest.raises(zoo.ModelNotFound, match=r"hf:DIR"):
        zoo.load("hf:bert-base-uncased")
    with pytest.raises(zoo.ModelNotFound, match="config.json"):
        zoo.load(f"hf:{__file__.rsplit('/', 1)[0]}")  # a local dir that is not a model


# -- data ------------------------------------------------------------------------------------
def test_text_data_errors_and_warnings(tmp_path, caplog):
    bad = write_csv(tmp_path / "a.csv", [("hello", "x")], header=("sentence", "label"))
    with pytest.raises(DataError, match=r"no column\(s\) 'text'.*--text-column"):
        load_dataset(bad, modality="text")
    ds = load_dataset(bad, text_column="sentence", label_column="label", eval_only=True)  # inferred: text
    assert ds.val.items == ["hello"]
    once = write_csv(tmp_path / "b.csv", sentiment_rows(10, 0) + [("odd one", "rare")])
    with pytest.raises(DataError, match="'rare' .* appear only once"):
        load_dataset(once)
    single = write_csv(tmp_path / "c.csv", [("a", "x"), ("b", "x")])
    with pytest.raises(DataError, match="single label"):
        load_dataset(single)
    d = tmp_path / "folder"
    d.mkdir()
    write_csv(d / "train.csv", sentiment_rows(10, 0) + [("", "pos"), ("odd one", "rare")])
    write_csv(d / "test.csv", sentiment_rows(4, 1))
    ds = load_dataset(d)
    # val is carved from train.csv; test.csv is kept aside, never used for selection
    assert ds.modality == "text" and ds.classes == ["neg", "pos", "rare"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 2, 4)
    warnings = " ".join(ds.info["warnings"])
    assert "empty text were left out (line(s) 12)" in warnings and "'rare' appear only once" in warnings
    from rehead.fit import fit
    with pytest.raises(DataError, match="text data but packaged:efficientnet_lite0 is a backbone for image data.*packaged:minilm"):
        fit(d, model="packaged:efficientnet_lite0", out=tmp_path / "r", progress=False, echo=lambda *a: None)
    write_csv(d / "test.csv", [("new", "unseen")])
    with pytest.raises(DataError, match="not in"):
        load_dataset(d)


def test_folder_train_test_and_eval_only(sentiment_folder):
    ds = load_dataset(sentiment_folder)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 16) and ds.classes == ["neg", "pos"]
    ev = load_dataset(sentiment_folder, eval_only=True)
    assert len(ev.train) == 0 and ev.val.items == ds.test.items


# -- classification ------------------------------------------------------------------------
def test_extract_on_minilm_then_predict_and_evaluate(sentiment_folder, tmp_path, caplog):
    from typer.testing import CliRunner
    from rehead.cli import app
    from rehead.features import FeatureCache
    from rehead.fit import fit
    run = fit(sentiment_folder, model="packaged:minilm", out=tmp_path / "run", strategy="extract",
              epochs=30, progress=False, echo=lambda *a: None)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["val_acc"] >= 0.9
    entries = FeatureCache().size()["entries"]
    # train.csv's 40 sentences (val carved from them) and test.csv's 16: the test split is scored once, from
    # features made like the others (kept, so that a warm fit scores it without the encoder)
    assert entries == 40 + 16
    # the same data again, no --model: text data takes packaged:minilm, every feature from the cache
    fit(sentiment_folder, out=tmp_path / "run2", strategy="extract", epochs=5, progress=False, echo=lambda *a: None)
    assert FeatureCache().size()["entries"] == entries
    assert "model: packaged:minilm" in (tmp_path / "run2" / "config.yaml").read_text()
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "what a wonderful and superb film"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("what a wonderful and superb film: pos ")
    # a text past the backbone's max length is read cut: said as fit says it, on stderr (--json stays JSON)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "a superb film " * 400, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["top"], r.output
    assert "note: 1 of 1 texts are longer than" in r.stderr and "read cut to their first" in r.stderr, r.stderr
    # a CSV (the fit's text column) or a .txt file of texts: one prediction a row, never the file's
    # name classified as a sentence; a missing one, another column or a gap in the rows is an error
    write_csv(tmp_path / "new.csv", [("what a wonderful and superb film", ""), ("the plot was awful and terrible", "")])
    (tmp_path / "new.txt").write_text("what a wonderful and superb film\n\nthe plot was awful and terrible\n")
    for f in ("new.csv", "new.txt"):
        r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / f), "--json"])
        assert r.exit_code == 0, r.output
        assert [(x["item"], x["top"][0]["label"]) for x in json.loads(r.output)] == [
            ("what a wonderful and superb film", "pos"), ("the plot was awful and terrible", "neg")]
    write_csv(tmp_path / "other.csv", [("a fine film", "pos")], header=("sentence", "label"))
    write_csv(tmp_path / "gap.csv", [("a fine film", ""), ("", ""), ("a bad film", "")])
    for f, said in (("missing.csv", "does not exist"), ("other.csv", "no 'text' column"),
                    ("gap.csv", "1 row(s) with empty text")):
        r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / f)])
        assert r.exit_code == 2 and said in r.output, r.output
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), " "])  # "$EMPTY": not a text to score
    assert r.exit_code == 2 and "an empty text was given" in r.output, r.output
    # a CSV whose columns are named otherwise than the fit's data: evaluate and predict take the options
    # the error names (they had none)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "other.csv"), "--text-column",
                                 "sentence"])
    assert r.exit_code == 0 and r.output.startswith("a fine film: "), r.output
    write_csv(tmp_path / "alt.csv", [("a superb film", "pos"), ("an awful film", "neg")], header=("sentence", "y"))
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "alt.csv")])
    assert r.exit_code == 2 and "--text-column / --label-column" in r.output, r.output
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "alt.csv"), "--json",
                                 "--text-column", "sentence", "--label-column", "y"])
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 2, r.output
    # evaluate read a text past the max length cut, unsaid (fit and predict say it): said, on stderr
    write_csv(tmp_path / "long.csv", [("a superb film " * 400, "pos"), ("an awful film", "neg")])
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "long.csv"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == 2, r.output
    assert "note: 1 of 2 texts are longer than" in r.stderr, r.stderr
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), "the film in results.csv was superb"])
    assert r.exit_code == 0 and r.output.startswith("the film in results.csv was superb: "), r.output
    # a text longer than a file name may be (it died in "File name too long"), a folder, another file
    long = "a wonderful and superb film " * 20
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), long])
    assert r.exit_code == 0 and r.output.startswith(f"{long}: pos "), r.output
    # a quoted CSV cell with a line break: one output line per text, the break shown as \n
    write_csv(tmp_path / "multi.csv", [("what a wonderful\nand superb film", ""), ("awful", "")])
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "multi.csv")])
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith("what a wonderful\\nand superb film: pos "), r.output
    assert len(r.output.splitlines()) == 2, r.output
    for arg, said in ((tmp_path, "is a folder"), (tmp_path / "run" / "config.yaml", "is a file, not a text")):
        r = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(arg)])
        assert r.exit_code == 2 and said in r.output, r.output
    # what reading the data finds is said once (it was printed twice by fit: logged and echoed), and
    # evaluate says it too
    rows = sentiment_rows(16, 1)
    write_csv(tmp_path / "dup.csv", rows + rows[:1] + [("", "pos")])
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "dup.csv")])
    assert r.exit_code == 0 and r.output.count("1 row(s) with empty text were left out") == 1, r.output
    with caplog.at_level(logging.WARNING):  # a WARNING with no handler set goes to stderr: a second copy
        r = CliRunner().invoke(app, ["fit", str(tmp_path / "dup.csv"), "--strategy", "extract", "--epochs", "2",
                                     "--out", str(tmp_path / "dup")])
    assert r.exit_code == 0 and r.output.count("1 repeated row(s)") == 1, r.output
    assert not [x for x in caplog.records if "repeated row" in x.getMessage()]
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(sentiment_folder), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["accuracy"] >= 0.9 and sum(map(sum, res["confusion_matrix"])) == 16


def test_gradual_unfreezes_top_blocks_with_lower_lrs(sentiment_folder, tmp_path, tiny_bert_dir):
    from rehead.fit import fit
    from rehead.run import Run
    before = zoo.load(f"hf:{tiny_bert_dir}").state_dict()
    fit(sentiment_folder, model=f"hf:{tiny_bert_dir}", out=tmp_path / "g", strategy="gradual", epochs=1,
        unfreeze=2, progress=False, echo=lambda *a: None, keep_last=True)
    run = Run(tmp_path / "g")
    assert [p["trainable"] for p in run.config["phases"]] == [0, 1, 2]
    after = run.model.backbone.state_dict()
    changed = {k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer0", "layer1"}  # the embeddings never unfroze
    assert len(run.predict(["a good film"])[0]["top"]) == 2


def test_ensemble_and_soup_of_fine_tuned_text_runs_take_raw_sentences(sentiment_folder, tmp_path, tiny_bert_dir):
    from typer.testing import CliRunner
    from rehead.cli import app
    from rehead.fit import fit
    runs = []
    for seed in (0, 1):
        runs.append(str(tmp_path / f"s{seed}"))
        fit(sentiment_folder, model=f"hf:{tiny_bert_dir}", out=runs[-1], strategy="finetune", epochs=1, unfreeze=1,
            seed=seed, progress=False, echo=lambda *a: None)
    cli = CliRunner()
    for out, extra in (("ens", []), ("soup", ["--soup"])):
        r = cli.invoke(app, ["ensemble", *runs, "--out", str(tmp_path / out), *extra])
        assert r.exit_code == 0, r.output
        r = cli.invoke(app, ["predict", str(tmp_path / out), "a wonderful film", "--json"])
        assert r.exit_code == 0, r.output
        top = json.loads(r.stdout)[0]["top"]
        assert json.loads(r.stdout)[0]["item"] == "a wonderful film" and abs(sum(t["prob"] for t in top) - 1) < 1e-5
        # seeds draw different val splits out of train.csv; test.csv is what both members left unseen
        r = cli.invoke(app, ["evaluate", str(tmp_path / out), "--json"])
        assert r.exit_code == 2 and "held-out data" in r.output
        r = cli.invoke(app, ["evaluate", str(tmp_path / out), str(sentiment_folder), "--json"])
        assert r.exit_code == 0 and json.loads(r.output)["n"] == 16


# -- domain adaptation ---------------------------------------------------------------------
@pytest.mark.parametrize("which", ["gpt2", "bert", "llama"])
def test_adapt_lowers_heldout_perplexity_and_fit_takes_the_result(which, tmp_path, sentiment_folder,
                                                                   tiny_bert_dir, tiny_gpt2_dir, tiny_llama_dir):
    from rehead.adapt import adapt
    from rehead.fit import fit
    from rehead.run import Run
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(s for s, _ in sentiment_rows(120, 3)) + "\n\n")
    d = {"bert": tiny_bert_dir, "gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[which]
    rep = adapt(corpus, f"hf:{d}", tmp_path / "lm", epochs=3, lr=3e-3, batch_size=16, progress=False,
                echo=lambda *a: None)
    assert rep["objective"] == ("masked" if which == "bert" else "causal")
    assert rep["perplexity_after"] < 0.7 * rep["perplexity_before"], rep
    assert (rep["train_passages"], rep["heldout_passages"]) == (108, 12)
    bb = zoo.load(str(tmp_path / "lm"))
    assert bb.modality == "text" and bb.family == which
    orig = zoo.load(f"hf:{d}")
    w = "stages.embeddings." + {"gpt2": "wte.weight", "bert": "embeddings.word_embeddings.weight",
                                "llama": "embed_tokens.weight"}[which]
    assert not torch.equal(bb.state_dict()[w], orig.state_dict()[w])  # the adapted weights, not the originals
    with pytest.raises(Exception, match="not empty"):
        adapt(corpus, f"hf:{d}", tmp_path / "lm", progress=False, echo=lambda *a: None)
    fit(sentiment_folder, model=str(tmp_path / "lm"), out=tmp_path / "cls", strategy="finetune", epochs=1,
        unfreeze=1, progress=False, echo=lambda *a: None)
    assert Run(tmp_path / "cls").predict(["good"])[0]["top"][0]["label"] in ("pos", "neg")


def test_adapt_cli_and_clear_errors(tmp_path, tiny_gpt2_dir):
    from typer.testing import CliRunner
    from rehead.cli import app
    corpus = tmp_path / "c.csv"
    write_csv(corpus, sentiment_rows(30, 0))
    r = CliRunner().invoke(app, ["adapt", str(corpus), "--model", f"hf:{tiny_gpt2_dir}", "--out",
                                 str(tmp_path / "lm"), "-q"])
    assert r.exit_code == 0, r.output
    assert "held-out perplexity" in r.output and "rehead fit DATA --model" in r.output
    r = CliRunner().invoke(app, ["adapt", str(corpus), "--model", "packaged:efficientnet_lite0", "--out",
                                 str(tmp_path / "x")])
    assert r.exit_code == 2 and "adapt needs a transformers language model" in r.output
    (tmp_path / "one.txt").write_text("only one line\n")
    r = CliRunner().invoke(app, ["adapt", str(tmp_path / "one.txt"), "--model", f"hf:{tiny_gpt2_dir}",
                                 "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "need at least 2" in r.output


# -- GloVe -----------------------------------------------------------------------------------
def test_glove_vectors_as_a_frozen_baseline(tmp_path, sentiment_folder):
    from rehead.fit import fit
    from rehead.run import Run
    rng = torch.Generator().manual_seed(0)
    lines = ["7 4"]  # word2vec header: count dim
    for w in POS + NEG + FILL[:2]:
        v = torch.randn(4, generator=rng) * 0.1 + (torch.tensor([1.0, 0, 0, 0]) if w in POS else
                                                   torch.tensor([-1.0, 0, 0, 0]) if w in NEG else 0)
        lines.append(w + " " + " ".join(f"{x:.4f}" for x in v.tolist()))
    vec = tmp_path / "vectors.txt"
    vec.write_text("\n".join(lines) + "\n")
    bb = zoo.load(f"glove:{vec}")
    x = bb.tokenize(["The GOOD film", "zzz"])
    assert x["attention_mask"].tolist()[1] == [0, 0, 0]  # unknown words are left out of the pooling
    assert bb(x).shape == (2, 8)  # mean and max
    fit(sentiment_folder, model=f"glove:{vec}", out=tmp_path / "run", strategy="extract", epochs=40, lr=3e-2,
        progress=False, echo=lambda *a: None)
    run = Run(tmp_path / "run")
    assert run.predict(["a superb plot"])[0]["top"][0]["label"] == "pos"
    assert run.evaluate(*run.val_split())["accuracy"] >= 0.9
    vec.write_text("good 1 2\nbad 1\n")
    with pytest.raises(zoo.ModelNotFound, match=":2 has 1 numbers"):
        zoo.load(f"glove:{vec}")


def test_real_financial_phrasebank_loads_with_its_test_split():
    d = shared_dataset("financial_phrasebank_allagree")
    ds = load_dataset(d)
    assert ds.classes == ["negative", "neutral", "positive"]
    # its 5 repeated rows stay on one side of the carve (was 1449 / 363, with copies on both sides)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1448, 364, 452)
    assert not set(ds.train.items) & set(ds.val.items)


def test_training_batches_group_similar_lengths_and_visit_every_text_once(tiny_bert_dir):
    from rehead.data import text
    bb = zoo.load(f"hf:{tiny_bert_dir}")
    rng = random.Random(0)
    items = [" ".join(rng.choices(FILL, k=rng.randint(1, 40))) for _ in range(400)]
    lengths = text.token_lengths(bb, items)

    def padded(loader):
        seen, cells = [], 0
        for idx, enc, _ in loader:
            seen += idx.tolist()
            cells += enc["input_ids"].numel()
        return sorted(seen), cells
    seen, grouped = padded(text.make_loader(bb, items, [0] * 400, batch_size=16, shuffle=True,
                                            generator=torch.Generator().manual_seed(0)))
    assert seen == list(range(400))
    _, unsorted = padded(text.make_loader(bb, items, [0] * 400, batch_size=16))
    assert grouped < 0.8 * unsorted and grouped >= sum(lengths)


def test_text_finetune_defaults_train_every_stage_and_given_options_win(sentiment_folder, tmp_path, tiny_bert_dir):
    """`--strategy finetune` on a text encoder, options unset: every stage, LRs 1.3x lower a stage,
    head dropout 0.1, 3 epochs at top LR 2e-3 (the measured text recipe); an image backbone and any
    option given keep what they say."""
    from rehead.config import FitConfig
    from rehead.fit import fit
    from rehead.run import Run
    fit(sentiment_folder, model=f"hf:{tiny_bert_dir}", out=tmp_path / "t", strategy="finetune",
        progress=False, echo=lambda *a: None)
    cfg = Run(tmp_path / "t").config
    live = cfg["phases"][-1]
    assert live["trainable"] == cfg["cut"] and live["lr_decay"] == 1.3 and live["epochs"] == 3  # every stage
    assert live["lr"] == pytest.approx(2e-4)  # the unfrozen phase runs at a tenth of the top LR
    assert cfg["head"]["dropout"] == 0.1 and cfg["fit"]["unfreeze"] == -1
    given = FitConfig(strategy="finetune", unfreeze=1, lr_decay=2.0, dropout=0.0, lr=1e-3).for_data("text")
    assert (given.unfreeze, given.lr_decay, given.dropout, given.lr, given.epochs) == (1, 2.0, 0.0, 1e-3, 3)
    image = FitConfig(strategy="finetune").for_data("image")
    assert (image.unfreeze, image.lr_decay, image.dropout, image.lr, image.epochs) == (2, 3.0, 0.0, None, None)
    other = FitConfig(strategy="gradual").for_data("text")  # only finetune and auto were measured
    assert (other.unfreeze, other.lr_decay, other.dropout) == (2, 3.0, 0.0)
    auto = FitConfig().for_data("text")  # auto: its own unfreezing plan and epochs, at the text LRs
    assert (auto.lr_decay, auto.dropout, auto.lr, auto.epochs) == (1.3, 0.1, 2e-3, None)
    assert FitConfig().for_data("image").lr is None
    assert FitConfig(strategy="finetune", find_lr=True).for_data("text").lr is None  # the finder picks it


def test_layer_decay_on_a_text_encoder_decays_per_layer(tiny_bert_dir):
    # An HF encoder has no timm grouping: --layer-decay decays per stage (its layers), not silently
    # the --lr-decay default.
    from rehead.heads import make_head
    from rehead.model import TransferModel
    bb = zoo.load(f"hf:{tiny_bert_dir}")
    m = TransferModel(bb, make_head(32, 2), layer_decay=0.5).set_trainable_last(-1)
    lrs = {g["name"].removesuffix(":no_decay"): g["lr"] for g in m.param_groups(1e-3, lr_decay=1.3)}
    assert lrs["head"] == pytest.approx(1e-3)
    names = [f"stage:{n}" for n in bb.stage_names]
    for k, name in enumerate(reversed(names), start=1):
        assert lrs[name] == pytest.approx(1e-3 * 0.5 ** k)


# -- loading reports, the Hub offline, truncation --------------------------------------------
def _hub_cache(root, repo: str, folder):
    """A Hugging Face cache holding ``folder``'s files as the snapshot of hub id ``repo``."""
    import shutil
    d = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, d / "snapshots" / ("0" * 40))
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text("0" * 40)
    return root


def test_a_hub_model_loads_from_the_cache_and_fails_fast_when_offline_and_not_cached(tmp_path, monkeypatch,
                                                                                     tiny_bert_dir):
    """Offline, `fit --model hf:bert-base-uncased` spent ~35 s in huggingface_hub's retries before its error."""
    import time
    from huggingface_hub import constants
    from rehead.zoo import hf
    monkeypatch.setattr(hf, "hub_reachable", lambda *a: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path / "hub", "rehead-test/tiny", tiny_bert_dir)))
    bb = zoo.load("hf:rehead-test/tiny")  # from the cache, no request
    assert bb.family == "bert" and constants.HF_HUB_OFFLINE is False  # offline only while loading
    t0 = time.perf_counter()
    with pytest.raises(zoo.ModelNotFound, match=r"not in the local Hugging Face cache .* the Hub is unreachable"):
        zoo.load("hf:rehead-test/not-cached")
    assert time.perf_counter() - t0 < 10


def test_an_adapt_outputs_hf_folder_pools_as_its_run_and_the_load_report_stays_quiet(tmp_path, tiny_bert_dir,
                                                                                     sentiment_folder, capfd):
    """`fit --model hf:runs/lm/hf` printed transformers' LOAD REPORT table under -q, and pooled with a random-
    pooler-free CLS instead of the run's mean pooling (val 0.80 against 0.85 for --model runs/lm)."""
    from typer.testing import CliRunner
    from rehead.adapt import adapt
    from rehead.cli import app
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(s for s, _ in sentiment_rows(20, 3)) + "\n")
    adapt(corpus, f"hf:{tiny_bert_dir}?pooling=mean", tmp_path / "lm", epochs=0, progress=False,
          echo=lambda *a: None)
    bb = zoo.load(f"hf:{tmp_path / 'lm' / 'hf'}")
    assert bb.data_config["pooling"] == zoo.load(str(tmp_path / "lm")).data_config["pooling"] == "mean"
    assert any("hf/ folder of `rehead adapt` output" in n and f"--model {tmp_path / 'lm'}" in n
               for n in bb.load_notes), bb.load_notes
    assert zoo.load(f"hf:{tmp_path / 'lm' / 'hf'}?pooling=max").data_config["pooling"] == "max"  # given: kept
    capfd.readouterr()
    r = CliRunner().invoke(app, ["fit", str(sentiment_folder), "--model", f"hf:{tmp_path / 'lm' / 'hf'}",
                                 "--strategy", "extract", "--out", str(tmp_path / "h"), "-q"])
    err = capfd.readouterr().err
    assert r.exit_code == 0, r.output
    assert "hf/ folder of `rehead adapt` output" in r.output, r.output
    for noise in ("LOAD REPORT", "UNEXPECTED", "MISSING"):
        assert noise not in r.output + err, r.output + err


def test_a_missing_pooler_on_default_cls_pooling_is_noted_once_in_rehead_words(tiny_bert_dir):
    """tiny_bert_dir is a BertForMaskedLM checkpoint: AutoModel's pooler is not in it."""
    notes = zoo.load(f"hf:{tiny_bert_dir}").load_notes
    assert len(notes) == 1 and "no pooler weights" in notes[0] and "?pooling=mean" in notes[0], notes
    assert zoo.load(f"hf:{tiny_bert_dir}?pooling=cls").load_notes == []  # chosen: nothing to say
    assert zoo.load("packaged:minilm").load_notes == []


def test_texts_cut_to_the_max_length_are_counted_and_said_once(tiny_bert_dir, caplog):
    from types import SimpleNamespace
    from rehead.data import text
    bb = zoo.load(f"hf:{tiny_bert_dir}?pooling=mean")
    ml = bb.data_config["max_length"]
    texts = ["word " * (ml + 5), "word " * (ml - 5), "short", "é" * (ml // 2)]
    assert bb.count_truncated(texts) == 1
    said = []
    ds = SimpleNamespace(train=SimpleNamespace(items=texts), val=SimpleNamespace(items=["x " * 300]), test=None)
    text.prepare_backbone(bb, ds, said.append)
    assert said == [f"note: 2 of 5 texts are longer than {ml} tokens, the backbone's max length: they are cut "
                    f"to their first {ml} tokens (the rest is not read)"], said
    assert "longer than the specified maximum" not in caplog.text
    text.prepare_backbone(bb, ds)  # no echo (fit-multitask): nothing said, nothing counted
