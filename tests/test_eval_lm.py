"""Perplexity of causal LMs (slimnet.measure.perplexity, ``slimnet eval-lm``): the number equals a hand
computation with the same windows, the window/stride plan scores each token once, the CLI's JSON fields, and
the refusals (not a causal LM, a text shorter than one window, no tokenizer), each one line with exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slimnet.cli import app
from slimnet.errors import SlimnetError
from slimnet.llm.texts import BUILTIN_TEXTS, builtin_text, resolve_text
from slimnet.measure.perplexity import Window, perplexity, tokenize, windows

from .helpers import cli_runner

tf = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

VOCAB = 256


def tiny_llama(seed: int = 0, causal: bool = True) -> torch.nn.Module:
    """A random 2-layer Llama with a 256-token vocabulary (GQA: 4 heads, 2 KV heads)."""
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = (tf.LlamaForCausalLM if causal else tf.LlamaModel)(cfg)
    with torch.no_grad():  # larger than the init's 0.02 so that the logits differ from a uniform guess
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


def tiny_tokenizer() -> object:
    """Word-level: 'w0' .. 'w254' are ids 0..254, '[UNK]' 255, split on whitespace; no special tokens added."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[UNK]")


def text_of(n: int, seed: int = 1) -> tuple[str, torch.Tensor]:
    """A text of ``n`` random words and the ids it must tokenise to."""
    ids = torch.randint(0, VOCAB - 1, (n,), generator=torch.Generator().manual_seed(seed))
    return " ".join(f"w{int(i)}" for i in ids), ids


def hand_ppl(model: torch.nn.Module, ids: torch.Tensor, plan: list[tuple[int, int, list[int]]]) -> float:
    """exp(mean NLL), target by target: each window (begin, end, targets) runs alone; target t is read from the
    log-softmax at position t - 1 - begin."""
    nll = []
    with torch.no_grad():
        for begin, end, targets in plan:
            logp = torch.log_softmax(model(input_ids=ids[begin:end][None]).logits[0].double(), dim=-1)
            nll += [-float(logp[t - 1 - begin, ids[t]]) for t in targets]
    return math.exp(sum(nll) / len(nll))


# ------------------------------------------------------------------------------------------ the window plan
def test_windows_non_overlapping_and_sliding():
    # non-overlapping: whole windows only (the tail of 2 is dropped); every token of a window but its first
    assert windows(10, 4) == [Window(0, 4, 1), Window(4, 8, 5)]
    # sliding (stride 2 < window 4): each window scores only what the previous one did not
    plan = windows(10, 4, stride=2)
    assert plan == [Window(0, 4, 1), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8)]
    scored = [t for w in plan for t in range(w.first, w.end)]
    assert scored == list(range(1, 10))  # each token once, every one but the very first
    # a stride above the window leaves gaps, never scores a token twice
    assert windows(10, 3, stride=4) == [Window(0, 3, 1), Window(4, 7, 5)]
    assert windows(10, 4, max_windows=1) == [Window(0, 4, 1)]
    assert windows(3, 4) == []
    for bad in ({"window": 1}, {"window": 4, "stride": 0}, {"window": 4, "max_windows": 0}):
        with pytest.raises(SlimnetError):
            windows(10, **bad)


# ------------------------------------------------------------------------------------------ the number
def test_perplexity_equals_hand_computation():
    model = tiny_llama()
    _, ids = text_of(50)
    got = perplexity(model, ids, window=16)
    # 3 whole windows of 16 in 50 tokens, 15 targets each
    assert (got["windows"], got["windows_available"], got["tokens"], got["text_tokens"]) == (3, 3, 45, 50)
    want = hand_ppl(model, ids, [(b, b + 16, list(range(b + 1, b + 16))) for b in (0, 16, 32)])
    assert got["perplexity"] == pytest.approx(want, rel=1e-5)
    assert got["mean_nll"] == pytest.approx(math.log(want), rel=1e-5)
    assert 1.5 < got["perplexity"] < 10 * VOCAB  # a real number, not a degenerate 1 or inf

    # sliding windows: targets 1..15 from the first window, then 4 new ones per window with >= 12 of context
    slid = perplexity(model, ids, window=16, stride=4, max_windows=3)
    plan = [(0, 16, list(range(1, 16))), (4, 20, list(range(16, 20))), (8, 24, list(range(20, 24)))]
    assert (slid["windows"], slid["tokens"], slid["windows_available"]) == (3, 23, 9)
    assert slid["perplexity"] == pytest.approx(hand_ppl(model, ids, plan), rel=1e-5)
    assert slid["perplexity"] != pytest.approx(got["perplexity"], rel=1e-3)  # the plan matters

    # one window over the whole text is one forward pass: the usual shifted cross-entropy
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0]
    one = torch.nn.functional.cross_entropy(logits[:-1], ids[1:]).exp()
    assert perplexity(model, ids, window=50)["perplexity"] == pytest.approx(float(one), rel=1e-5)


def test_tokenize_and_refusals():
    text, ids = text_of(20)
    assert torch.equal(tokenize(text, tiny_tokenizer()), ids)
    with pytest.raises(SlimnetError, match="fewer than one window"):
        perplexity(tiny_llama(), ids, window=32)
    with pytest.raises(SlimnetError, match="not a causal language model"):
        perplexity(tiny_llama(causal=False), ids, window=8)
    with pytest.raises(SlimnetError, match="longer than the model's 64 positions"):
        perplexity(tiny_llama(), torch.cat([ids] * 5), window=100)


# ------------------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hf: folder of the tiny Llama with its tokenizer, and a text of 300 words."""
    root = tmp_path_factory.mktemp("evallm")
    tiny_llama().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    text, _ = text_of(300)
    (root / "text.txt").write_text(text + "\n")
    return root


def test_cli_json_fields_match_the_api(folder: Path):
    args = ["eval-lm", f"hf:{folder / 'lm'}", "--text", str(folder / "text.txt"), "--window", "32"]
    res = cli_runner().invoke(app, [*args, "--stride", "16", "--max-windows", "5", "--json", "--quiet"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    for key in ("model", "text", "tokenizer", "window", "stride", "windows", "windows_available", "tokens",
                "text_tokens", "mean_nll", "perplexity", "seconds"):  # fmt: skip
        assert key in rep
    assert (rep["window"], rep["stride"], rep["windows"], rep["windows_available"]) == (32, 16, 5, 17)
    assert (rep["tokens"], rep["text_tokens"]) == (31 + 4 * 16, 300)
    _, ids = text_of(300)
    model = tf.LlamaForCausalLM.from_pretrained(str(folder / "lm")).eval()
    want = perplexity(model, ids, window=32, stride=16, max_windows=5)["perplexity"]
    assert rep["perplexity"] == pytest.approx(want, rel=1e-6)
    assert rep["mean_nll"] == pytest.approx(math.log(rep["perplexity"]), rel=1e-9)

    # text output: one line naming the window and the counts
    res = cli_runner().invoke(app, [*args, "--quiet"])
    assert res.exit_code == 0, res.stderr
    assert "9 windows of 32 tokens, stride 32" in res.stdout and "279 tokens scored of 300" in res.stdout


def test_cli_refusals_are_one_line(folder: Path, tmp_path: Path):
    runner = cli_runner()
    short = tmp_path / "short.txt"
    short.write_text("w1 w2 w3\n")
    bare = tmp_path / "bare"  # a model folder without tokenizer files, as shrink writes one
    tiny_llama().save_pretrained(bare)
    base = tmp_path / "base"
    tiny_llama(causal=False).save_pretrained(base)
    text = str(folder / "text.txt")
    cases = {
        "fewer than one window": ["eval-lm", f"hf:{folder / 'lm'}", "--text", str(short), "--window", "8"],
        "no tokenizer files": ["eval-lm", f"hf:{bare}", "--text", text],
        "not a causal language model": ["eval-lm", f"hf:{base}", "--text", text, "--tokenizer", str(folder / "lm")],
        "does not exist": ["eval-lm", f"hf:{folder / 'lm'}", "--text", str(tmp_path / "nope.txt")],
        "no built-in text": ["eval-lm", f"hf:{folder / 'lm'}", "--text", "builtin:nope"],
    }
    for message, args in cases.items():
        res = runner.invoke(app, [*args, "--quiet"])
        assert res.exit_code == 2, (message, res.stdout, res.stderr)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr
    # a torch.save(model) file of an HF causal LM, with --tokenizer: the same number as its folder
    torch.save(tf.LlamaForCausalLM.from_pretrained(str(folder / "lm")).eval(), tmp_path / "lm.pt")
    common = ["--text", text, "--window", "32", "--json", "--quiet"]
    res = runner.invoke(app, ["eval-lm", str(tmp_path / "lm.pt"), "--tokenizer", str(folder / "lm"), "--trust-pickle",
                              *common])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    res_hf = runner.invoke(app, ["eval-lm", f"hf:{folder / 'lm'}", *common])
    assert json.loads(res.stdout)["perplexity"] == pytest.approx(json.loads(res_hf.stdout)["perplexity"], rel=1e-6)
    # --tokenizer makes the bare folder measurable
    res = runner.invoke(app, ["eval-lm", f"hf:{bare}", "--text", text, "--window", "32", "--tokenizer",
                              str(folder / "lm"), "--json", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["windows"] == 9


def test_builtin_texts_are_vendored_and_disjoint():
    calib, held = builtin_text("shakespeare-calib"), builtin_text("shakespeare-eval")
    assert set(BUILTIN_TEXTS) == {"shakespeare-calib", "shakespeare-eval"}
    assert resolve_text("builtin:shakespeare-eval") == str(held) and resolve_text("x.txt") == "x.txt"
    a, b = calib.read_text(encoding="utf-8"), held.read_text(encoding="utf-8")
    assert len(a.encode()) + len(b.encode()) <= 2_000_000
    assert (a.count("\n"), b.count("\n")) == (36009, 3990)
    assert a.startswith("First Citizen:") and b.startswith("BAPTISTA:")
    assert (Path(calib).parent / "README.md").is_file()


# ------------------------------------------------------------------------------------------ sensitivity --metric ppl
def test_sensitivity_metric_ppl(folder: Path, tmp_path: Path):
    lm, text = folder / "lm", str(folder / "text.txt")
    lines = tmp_path / "calib.txt"  # calibration rows for the ranking (one example per line)
    lines.write_text("\n".join(" ".join(f"w{(7 * i + j) % 255}" for j in range(12)) for i in range(8)) + "\n")
    args = ["sensitivity", f"hf:{lm}", "-o", str(tmp_path / "s.json"), "--data", str(lines), "--calib-batches",
            "1", "--batch-size", "8", "--ratios", "0.5", "--round-to", "1", "--json"]  # fmt: skip
    res = cli_runner().invoke(app, [*args, "--metric", "ppl", "--text", text, "--window", "32", "--max-windows", "3"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    _, ids = text_of(300)
    model = tf.LlamaForCausalLM.from_pretrained(str(lm)).eval()
    dense = perplexity(model, ids, window=32, max_windows=3)["perplexity"]
    assert rep["metric"] == "perplexity" and rep["higher_is_better"] is False
    assert rep["baseline"] == pytest.approx(dense, rel=1e-6)
    assert rep["perplexity"] == {"text": text, "window": 32, "stride": 32, "windows": 3, "tokens": 93}
    points = [p for g in rep["groups"] for p in g["points"]]
    assert points and all(p["loss"] == pytest.approx(max(0.0, p["value"] - dense)) for p in points)
    assert any(abs(p["value"] - dense) > 1e-3 * dense for p in points)  # a cut moves the perplexity

    for extra, message in (
        (["--metric", "ppl"], "--metric ppl needs --text"),
        (["--text", text], "only read with --metric ppl"),
        (["--metric", "bleu"], "is not known"),
    ):
        res = cli_runner().invoke(app, [*args, *extra])
        assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_data_builtin_text(folder: Path, tmp_path: Path):
    """--data builtin:NAME reads the shipped text (every Shakespeare word is [UNK] to the tiny tokenizer: what
    counts is that the file is found and read); an unknown name is one line."""
    args = ["sensitivity", f"hf:{folder / 'lm'}", "-o", str(tmp_path / "s.json"), "--calib-batches", "1",
            "--batch-size", "4", "--ratios", "0.5", "--round-to", "1", "--json"]  # fmt: skip
    res = cli_runner().invoke(app, [*args, "--data", "builtin:shakespeare-calib"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["calibration"]
    res = cli_runner().invoke(app, [*args, "--data", "builtin:nope"])
    assert res.exit_code == 2 and "no built-in text 'nope'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
