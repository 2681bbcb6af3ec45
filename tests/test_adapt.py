"""`rehead adapt`: the adapted backbone keeps its source's preprocessing; bad options, models and
corpora are refused before --out exists; transformers' load report is replaced by one line.
The training itself is tested in test_text.py."""
from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from rehead import zoo
from rehead.adapt import adapt, perplexity
from rehead.cli import app

PREP = ("pooling", "max_length", "normalize")
LINES = ["the plot was thin but the acting carried it", "a slow film that never finds its story",
         "great fun from start to finish", "the worst movie of the year", "quietly moving and well made",
         "too long by half and dull throughout"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(LINES) + "\n")
    return p


def quiet(*a):
    pass


def prep(spec_or_dir) -> dict:
    dc = zoo.load(str(spec_or_dir), pretrained=False).data_config
    return {k: dc.get(k) for k in PREP}


def test_adapted_minilm_pools_and_truncates_as_minilm_and_says_its_mlm_head_is_new(tmp_path, corpus, capfd):
    """all-MiniLM-L6-v2: mean pooling, 256 tokens (its sentence-transformers card), and no MLM head in
    its checkpoint; hf/ has no card, so without the spec's options the result was CLS pooling, 512."""
    said = []
    rep = adapt(corpus, "packaged:minilm", tmp_path / "lm", epochs=0, batch_size=8, max_length=32,
                progress=False, echo=said.append)
    assert prep(tmp_path / "lm") == prep("packaged:minilm") == {"pooling": "mean", "max_length": 256,
                                                                "normalize": None}
    assert rep["head_from_random"] and any("starts from random weights" in s for s in said), said
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "corrupted" not in err and "MISSING" not in err, err


def test_adapt_keeps_spec_options_and_says_nothing_of_a_head_the_checkpoint_has(tmp_path, corpus, tiny_bert_dir):
    said = []
    spec = f"hf:{tiny_bert_dir}?pooling=max&max_length=48&normalize=1"
    rep = adapt(corpus, spec, tmp_path / "lm", epochs=1, batch_size=8, max_length=16, progress=False,
                echo=said.append)
    assert prep(tmp_path / "lm") == {"pooling": "max", "max_length": 48, "normalize": True}
    assert not rep["head_from_random"] and not any("random weights" in s for s in said), said
    # an adapt of the adapted directory keeps them too
    adapt(corpus, str(tmp_path / "lm"), tmp_path / "lm2", epochs=0, progress=False, echo=quiet)
    assert prep(tmp_path / "lm2") == prep(tmp_path / "lm")


@pytest.mark.parametrize("option, value, words", [
    ("epochs", -1, "--epochs must be >= 0"), ("lr", -1.0, "--lr must be > 0"), ("lr", 0.0, "--lr must be > 0"),
    ("batch_size", 0, "--batch-size must be >= 1"), ("max_length", 0, "--max-length must be >= 1"),
    ("val_fraction", 1.0, "--val-fraction must be between 0 and 1"),
    ("mlm_probability", 0.0, "--mlm-probability must be between 0 and 1"),
    ("objective", "mlm", "--objective must be one of"), ("seed", -1, "--seed must be >= 0"),
    ("seed", 2**32, "--seed must be >= 0 and <= 4294967295")])
def test_bad_options_are_refused_before_out_exists(tmp_path, corpus, tiny_bert_dir, option, value, words):
    from rehead.config import ConfigError
    with pytest.raises(ConfigError, match=words):
        adapt(corpus, f"hf:{tiny_bert_dir}", tmp_path / "lm", progress=False, echo=quiet, **{option: value})
    assert not (tmp_path / "lm").exists()


def adapt_cli(out, *args):
    return CliRunner().invoke(app, ["adapt", *map(str, args), "--out", str(out), "-q"])


def test_a_missing_model_folder_is_named_as_fit_names_it(tmp_path, corpus):
    r = adapt_cli(tmp_path / "lm", corpus, "--model", "hf:/tmp/rehead-no-such-dir", "--epochs", "0")
    assert r.exit_code == 2 and "no folder /tmp/rehead-no-such-dir" in r.output, r.output
    assert not (tmp_path / "lm").exists()


def test_a_folder_without_train_csv_is_said_not_to_be_a_corpus(tmp_path, tiny_bert_dir):
    (tmp_path / "run").mkdir()  # it exists: it is just not a corpus
    r = adapt_cli(tmp_path / "lm", tmp_path / "run", "--model", f"hf:{tiny_bert_dir}")
    assert r.exit_code == 2 and "is a folder without train.csv" in r.output, r.output
    assert "does not exist" not in r.output and not (tmp_path / "lm").exists()


def test_a_failed_adapt_leaves_no_directory_and_a_used_out_names_only_adapts_options(tmp_path, corpus,
                                                                                      tiny_bert_dir):
    r = adapt_cli(tmp_path / "lm", corpus, "--model", f"hf:{tiny_bert_dir}", "--lr", "-1")
    assert r.exit_code == 2 and not (tmp_path / "lm").exists(), r.output
    assert adapt_cli(tmp_path / "lm", corpus, "--model", f"hf:{tiny_bert_dir}", "--epochs", "0").exit_code == 0
    r = adapt_cli(tmp_path / "lm", corpus, "--model", f"hf:{tiny_bert_dir}", "--epochs", "0")
    assert r.exit_code == 2 and "--overwrite" in r.output and "--resume" not in r.output, r.output


def test_perplexity_of_a_diverged_lm_is_inf_not_an_overflow(tiny_bert_dir):
    from rehead.zoo.hf import load_hf_model
    lm, tok, _ = load_hf_model(str(tiny_bert_dir), pretrained=True, lm="masked")
    with torch.no_grad():
        lm.get_output_embeddings().weight.mul_(1e4)  # logits in the thousands: mean CE far past exp's range
    ppl = perplexity(lm, LINES, tok, "masked", max_length=16, batch_size=8, mlm_probability=0.5, seed=0,
                     device="cpu")
    assert ppl == math.inf


def test_a_held_out_set_with_no_token_to_score_is_said_not_read_as_perplexity_one(tmp_path, tiny_bert_dir):
    """`printf "a\\nb\\n" | adapt` printed "held-out perplexity 1.00 -> 1.00": no token was masked, and
    the mean of nothing read as a perfect model."""
    p = tmp_path / "tiny.txt"
    p.write_text("a\nb\n")
    said = []
    rep = adapt(p, f"hf:{tiny_bert_dir}", tmp_path / "lm", epochs=1, batch_size=8, max_length=16, progress=False,
                echo=said.append)
    assert math.isnan(rep["perplexity_before"]) and math.isnan(rep["perplexity_after"])
    assert any("gave no token to score" in s for s in said), said
    assert said[-1].startswith("held-out perplexity not measured -> not measured"), said
    assert (tmp_path / "lm" / "adapt.json").exists()


def test_causal_objective_on_an_encoder_is_refused_before_anything_is_written(tmp_path, corpus):
    """`adapt --model packaged:minilm --objective causal` trained a BertLMHeadModel with is_decoder false:
    bidirectional attention, so its "held-out perplexity 54528 -> 241" was scored with the next token visible."""
    from rehead.config import ConfigError
    with pytest.raises(ConfigError, match=r"--objective causal needs a decoder.*use --objective masked"):
        adapt(corpus, "packaged:minilm", tmp_path / "lm", objective="causal", progress=False, echo=quiet)
    assert not (tmp_path / "lm").exists()
    r = adapt_cli(tmp_path / "lm", corpus, "--model", "packaged:minilm", "--objective", "causal")
    assert r.exit_code == 2 and "--objective masked" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "lm").exists()


def test_a_max_length_past_the_models_positions_is_refused_before_it_loads(tmp_path, corpus, monkeypatch):
    """`adapt --model packaged:minilm --max-length 1000` (512 positions) failed inside the first long batch,
    with a raw error, after --out was made."""
    from rehead.config import ConfigError
    from rehead.zoo import hf
    monkeypatch.setattr(hf, "load_hf_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"--max-length 1000 is more than packaged:minilm takes: its maximum is "
                                          r"512 tokens .*give --max-length 512 or less"):
        adapt(corpus, "packaged:minilm", tmp_path / "lm", max_length=1000, progress=False, echo=quiet)
    assert not (tmp_path / "lm").exists()
    r = adapt_cli(tmp_path / "lm", corpus, "--model", "packaged:minilm", "--max-length", "513")
    assert r.exit_code == 2 and "its maximum is 512" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "lm").exists()


def test_max_positions_leave_out_robertas_padding_offset():
    """RoBERTa-style position ids start after the padding index: roberta-base's 514 rows take 512 tokens."""
    from transformers import BertConfig, GPT2Config, MPNetConfig, RobertaConfig, XLMRobertaConfig, XLNetConfig
    from rehead.adapt import checked_max_length
    from rehead.zoo.hf import max_positions
    from rehead.config import ConfigError
    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert max_positions(XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert max_positions(MPNetConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert max_positions(BertConfig(max_position_embeddings=512)) == 512
    assert max_positions(GPT2Config(n_positions=1024)) == 1024
    assert max_positions(XLNetConfig()) is None  # relative positions: no fixed limit to check
    roberta = RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    assert checked_max_length(roberta, 512, "hf:roberta-base") == 512
    with pytest.raises(ConfigError, match="its maximum is 512"):
        checked_max_length(roberta, 513, "hf:roberta-base")
    # not given: 128, or a smaller model's maximum (a tiny test BERT has 64 positions)
    assert checked_max_length(roberta, None, "") == 128
    assert checked_max_length(BertConfig(max_position_embeddings=64), None, "") == 64


def test_causal_attention_is_read_from_the_config_not_the_head_class_name():
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig
    from rehead.adapt import causal_attention, pick_objective
    assert causal_attention(GPT2Config()) and causal_attention(LlamaConfig())
    assert not causal_attention(BertConfig()) and not causal_attention(RobertaConfig())
    assert causal_attention(BertConfig(is_decoder=True))  # BERT built as a decoder: causal masks
    # what the bug saved: a BertLMHeadModel without is_decoder is an encoder; auto picks masked for it
    assert not causal_attention(BertConfig(architectures=["BertLMHeadModel"]))
    assert pick_objective(BertConfig(architectures=["BertLMHeadModel"])) == "masked"
    assert pick_objective(GPT2Config(architectures=["GPT2LMHeadModel"]), "causal") == "causal"
    from rehead.config import ConfigError  # masked on a decoder said "Offline? ... hf download" for a local folder
    with pytest.raises(ConfigError, match=r"--objective masked needs an encoder.*use --objective causal"):
        pick_objective(GPT2Config(), "masked", "hf:gpt2")


JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffdb004300") + bytes(range(256)) * 8


@pytest.mark.parametrize("name, content, words", [
    ("img.jpg", JPEG, "is not a .txt or .csv file"),
    ("table.xlsx", b"text\nfirst passage\nsecond passage\n", "is not a .txt or .csv file"),
    ("corpus", b"first passage\nsecond passage\n", "is not a .txt or .csv file"),
    ("img.txt", JPEG, "is not UTF-8 text (byte 0xff at offset 0)"),
    ("nul.txt", b"first passage\x00\nsecond passage\n", "holds NUL bytes"),
    ("img.csv", JPEG, "is not UTF-8 text")])
def test_a_corpus_that_is_not_text_is_refused_before_out_exists(tmp_path, name, content, words):
    """`adapt img.jpg` read the JPEG as UTF-8 with replacement characters: ~1000 garbled 'passages',
    trained on; a CSV renamed .xlsx was read as lines of text."""
    p = tmp_path / name
    p.write_bytes(content)
    r = adapt_cli(tmp_path / "lm", p, "--model", "packaged:minilm", "--epochs", "0")
    assert r.exit_code == 2 and words in r.output and str(p) in r.output, r.output
    assert ".txt" in r.output and "text column" in r.output, r.output  # what is taken instead
    assert not (tmp_path / "lm").exists()


def test_an_interrupted_adapt_leaves_no_directory_and_says_to_run_it_again(tmp_path, corpus, tiny_bert_dir,
                                                                          monkeypatch):
    """Ctrl-C printed a bare 'error: interrupted' and left .lock, .rehead-run and metrics.csv in --out: the
    rerun was refused ('already exists') and `fit --model OUT` said it 'is not a model spec'."""
    from rehead.train import loop
    calls = []

    def ctrl_c():
        calls.append(1)
        if len(calls) == 3:  # the second epoch's start: the first one's metrics.csv is written
            raise KeyboardInterrupt
    args = [corpus, "--model", f"hf:{tiny_bert_dir}", "--epochs", "3", "--max-length", "16"]
    with monkeypatch.context() as m:
        m.setattr(loop, "check_interrupt", ctrl_c)
        r = adapt_cli(tmp_path / "lm", *args)
    assert r.exit_code == 130 and "nothing was saved" in r.output, r.output
    assert "rehead adapt cannot resume" in r.output and "run the same command again" in r.output, r.output
    assert not (tmp_path / "lm").exists()
    assert adapt_cli(tmp_path / "lm", *args).exit_code == 0  # the same command, no --overwrite


def test_a_corpus_csv_without_its_text_column_names_only_the_option_adapt_has(tmp_path):
    """The refusal suggested `--text-column / --label-column`; adapt reads no labels and has no --label-column."""
    from rehead.adapt import read_corpus
    from rehead.data import DataError
    (tmp_path / "c.csv").write_text("sentence\nthe market rose\n")
    with pytest.raises(DataError, match=r"no column\(s\) 'text' .*name yours with --text-column$"):
        read_corpus(tmp_path / "c.csv")
