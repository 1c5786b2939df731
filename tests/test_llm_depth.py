"""Depth pruning of decoder LMs (``shrink hf:DIR --drop-layers N``, :mod:`slimnet.llm.depth`): random 4-layer
Llama / Qwen2 models with a tokenizer built here (no download), one layer made near-identity (its o_proj and
down_proj zeroed) so block influence must choose it; the output loads with plain AutoModelForCausalLM and its
logits equal the original's with the dropped layers skipped; bad input is one line with nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from slimnet.cli import app
from slimnet.llm import depth

from .helpers import cli_runner

tf = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
tf.logging.set_verbosity_error()

LINES = [
    "the cat sat on the mat",
    "a dog ran in the park today",
    "the sun is bright",
    "we eat bread and jam at noon with the dog",
    "rain falls on the hills",
    "birds sing in the morning light",
]
SIZES = dict(
    hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=256,
    num_hidden_layers=4, max_position_embeddings=64,
)  # fmt: skip
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**SIZES),
    # sliding attention on layers >= 2 with a window shorter than the lines: layer_types must follow the layers
    "qwen2": lambda: tf.Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=3, max_window_layers=2),
    "mistral": lambda: tf.MistralConfig(**SIZES, sliding_window=3),
    "qwen3": lambda: tf.Qwen3Config(**SIZES, head_dim=16),
    "gemma": lambda: tf.GemmaConfig(**SIZES, head_dim=16),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**SIZES, head_dim=16, sliding_window=3, sliding_window_pattern=2),
    "phi3": lambda: tf.Phi3Config(**SIZES, pad_token_id=0),  # fused qkv_proj and gate_up_proj
}


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over LINES, with an eos token and no pad token (as decoder LMs ship)."""
    words = sorted({w for line in LINES for w in line.split()})
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>").save_pretrained(folder)


def make(tmp_path: Path, kind: str = "llama", quiet: int | None = 1, shard: str | None = None) -> Path:
    """A random 4-layer model folder (layer ``quiet`` near-identity) with a tokenizer and calib.txt beside."""
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[kind]())
    with torch.no_grad():
        for p in model.parameters():  # larger than the default init: the layers change the residual stream
            if p.dim() > 1:
                p.normal_(0, 0.1)
        if quiet is not None:
            layer = model.model.layers[quiet]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    folder = tmp_path / kind
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    save_tokenizer(folder)
    (tmp_path / "calib.txt").write_text("\n".join(LINES) + "\n")
    return folder


def batches(folder: Path, calib: Path) -> list[dict[str, torch.Tensor]]:
    return depth.text_batches(depth.inspect_folder(folder), str(calib), 4, 8)


def skipped_logits(folder: Path, dropped: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The original model (in memory) with the ``dropped`` layers replaced by identity."""
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    for i in dropped:
        model.model.layers[i].register_forward_hook(skip, with_kwargs=True)
    with torch.no_grad():
        return model(**batch).logits


def skip(_module: Any, args: tuple[Any, ...], _kwargs: dict[str, Any], _out: Any) -> Any:
    """A forward hook that makes a decoder layer the identity."""
    return args[0]


def run(args: list[str]) -> Any:
    return cli_runner().invoke(app, ["shrink", *args])


# ------------------------------------------------------------------------------------------ ranking
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_block_influence_chooses_the_near_identity_layer_and_matches_in_memory(tmp_path, kind):
    folder = make(tmp_path, kind, quiet=2)
    data = batches(folder, tmp_path / "calib.txt")
    scores = depth.block_influence(depth.inspect_folder(folder), data)
    assert scores[2] < 1e-6 < 0.01 < min(scores[i] for i in (0, 1, 3))
    assert depth.choose(scores, 1) == [2]
    # the layer-by-layer scores equal those of the whole model's own forward, hooked (same formula, in memory)
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    sums = {i: [0.0, 0] for i in range(4)}

    def hook(i: int) -> Any:
        def record(_module, args, _kwargs, out):
            cos = torch.nn.functional.cosine_similarity(args[0].float(), out.float(), dim=-1)
            m = record.mask.float()
            sums[i][0] += float(((1 - cos) * m).sum())
            sums[i][1] += int(m.sum())

        return record

    hooks = [hook(i) for i in range(4)]
    for i, h in enumerate(hooks):
        model.model.layers[i].register_forward_hook(h, with_kwargs=True)
    with torch.no_grad():
        for b in data:
            for h in hooks:
                h.mask = b["attention_mask"]
            model(**b)
    for i in range(4):
        assert scores[i] == pytest.approx(sums[i][0] / sums[i][1], rel=1e-5, abs=1e-9)


def test_ppl_rank_is_the_perplexity_with_the_layer_skipped(tmp_path):
    folder = make(tmp_path, quiet=None)
    data = batches(folder, tmp_path / "calib.txt")
    scores, dense = depth.perplexity_without(depth.inspect_folder(folder), data)
    for i in (0, 3):  # recomputed independently: cross-entropy of the next real token, identity hook
        model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
        model.model.layers[i].register_forward_hook(skip, with_kwargs=True)
        nll, n = 0.0, 0
        with torch.no_grad():
            for b in data:
                logits = model(**b).logits.float()
                for row in range(b["input_ids"].shape[0]):
                    length = int(b["attention_mask"][row].sum())  # right padding
                    ids = b["input_ids"][row, :length]
                    loss = torch.nn.functional.cross_entropy(logits[row, : length - 1], ids[1:], reduction="sum")
                    nll, n = nll + float(loss), n + length - 1
        assert scores[i] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert len(set(scores.values())) == 4 and all(s != dense for s in scores.values())
    # one batch a group (each layer read once per batch): the same numbers
    assert depth.perplexity_without(depth.inspect_folder(folder), data, budget=1) == (scores, dense)
    r = run([f"hf:{folder}", "--drop-layers", "2", "--layer-rank", "ppl", "--data", str(tmp_path / "calib.txt"),
             "-o", str(tmp_path / "out"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout.strip().splitlines()[-1])["depth"]
    assert d["rank"] == "ppl" and d["dropped"] == sorted(sorted(scores, key=scores.get)[:2])
    assert d["dense_ppl"] == pytest.approx(dense)


# ------------------------------------------------------------------------------------------ the output
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_layer_by_layer_verification_is_exact_too(tmp_path, kind):
    """The low-memory verification (the written folder built from its config, each tensor loaded strictly, one
    layer at a time) agrees with plain transformers: exact, for every family; the near-identity layer goes."""
    folder = make(tmp_path, kind, quiet=0)
    res = depth.drop_layers(depth.inspect_folder(folder), 2, batches(folder, tmp_path / "calib.txt"),
                            tmp_path / "out", verify="layer-by-layer")  # fmt: skip
    assert res.verified_by == "layer-by-layer" and res.max_abs_diff == 0.0 and 0 in res.dropped
    assert res.scores[0] < 1e-6 < min(res.scores[i] for i in (1, 2, 3))
    assert depth.verify_dropped(depth.inspect_folder(folder), tmp_path / "out", res.dropped,
                                batches(folder, tmp_path / "calib.txt"), "plain") == (0.0, "plain")  # fmt: skip


@pytest.mark.parametrize(("kind", "shard"), [("llama", "100KB"), ("qwen2", None)])
def test_dropped_folder_loads_plain_and_equals_the_original_with_layers_skipped(tmp_path, kind, shard):
    folder = make(tmp_path, kind, quiet=1, shard=shard)
    out = tmp_path / "out"
    r = run([f"hf:{folder}", "--drop-layers", "2", "--data", str(tmp_path / "calib.txt"), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    d = report["depth"]
    assert 1 in d["dropped"] and len(d["dropped"]) == 2 and d["rank"] == "block-influence"
    assert d["layers_before"] == 4 and d["layers_after"] == 2 and d["max_abs_diff"] == 0.0 and d["exact"]
    assert d["verified_by"] == "plain"  # a small model: loaded whole with plain transformers
    assert set(d["scores"]) == {"0", "1", "2", "3"} and d["dropped_scores"] == {
        str(i): d["scores"][str(i)] for i in d["dropped"]
    }
    kept = [i for i in range(4) if i not in d["dropped"]]
    assert json.loads((out / "slimnet_plan.json").read_text())["depth"] == {
        "dropped": d["dropped"], "scores": d["scores"], "rank": "block-influence"
    }  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and "auto_map" not in cfg
    if kind == "qwen2":
        full = tf.AutoConfig.from_pretrained(folder).layer_types
        assert cfg["layer_types"] == [full[i] for i in kept] and len(set(full)) == 2
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert (out / "model.safetensors.index.json").is_file() == (shard is not None)
    # renamed keys, the kept layers' tensors untouched
    from safetensors.torch import load_file

    orig, new = {}, {}
    for f in folder.glob("*.safetensors"):
        orig.update(load_file(f))
    for f in out.glob("*.safetensors"):
        new.update(load_file(f))
    layer_keys = {k.split(".")[2] for k in new if k.startswith("model.layers.")}
    assert layer_keys == {"0", "1"}
    for k, t in new.items():
        old = k
        if k.startswith("model.layers."):
            parts = k.split(".")
            parts[2] = str(kept[int(parts[2])])
            old = ".".join(parts)
        assert torch.equal(t, orig[old]), k
    assert len(new) == len(orig) - len([k for k in orig if k.split(".")[2:3] in ([str(i)] for i in d["dropped"])])
    if shard:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(new)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in new.values())
    # plain transformers loads it (no remote code) and it is the original with those layers skipped
    model = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    assert len(model.model.layers) == 2
    b = batches(folder, tmp_path / "calib.txt")[0]
    with torch.no_grad():
        got = model(**b).logits
    assert torch.equal(got, skipped_logits(folder, d["dropped"], b))
    assert not torch.allclose(got, skipped_logits(folder, [], b), atol=1e-3)  # dropping changed the model
    assert report["params"][1] < report["params"][0] == sum(t.numel() for t in orig.values())
    assert report["output"] == str(out) and report["plan"] == str(out / "slimnet_plan.json")


def test_text_report_names_the_dropped_layers_and_scores(tmp_path):
    folder = make(tmp_path, quiet=3)
    r = run([f"hf:{folder}", "--drop-layers", "1", "--data", str(tmp_path / "calib.txt"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "dropped 1 of 4 decoder layers" in r.stdout and "layer 3 (" in r.stdout
    assert "verified (exact): max abs diff 0" in r.stdout and "slimnet_plan.json" in r.stdout


@pytest.mark.parametrize("how", ["plain", "layer-by-layer"])
def test_a_wrong_rewrite_is_caught_and_nothing_written(tmp_path, monkeypatch, how):
    """The verification is real: a config that forgets to slice layer_types (each kept Qwen2 layer must keep
    its own sliding/full attention) fails it, and the output is not written."""
    folder = make(tmp_path, "qwen2", quiet=None)
    source = depth.inspect_folder(folder)
    data = batches(folder, tmp_path / "calib.txt")
    real = depth.dropped_config

    def unsliced(src: Any, kept: list[int]) -> dict[str, Any]:
        cfg = real(src, kept)
        cfg["layer_types"] = ["full_attention"] * len(kept)
        return cfg

    monkeypatch.setattr(depth, "dropped_config", unsliced)
    monkeypatch.setattr(depth, "choose", lambda _scores, _n: [0, 1])  # keep the two sliding layers
    with pytest.raises(depth.VerificationError, match="nothing was written"):
        depth.drop_layers(source, 2, data, tmp_path / "out", verify=how)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "qwen2"]


def test_with_ratio_layers_go_first_then_the_width(tmp_path):
    folder = make(tmp_path, quiet=2)
    out = tmp_path / "out"
    args = [f"hf:{folder}", "--drop-layers", "1", "--ratio", "0.5", "--round-to", "8", "--json"]  # MLPs in 64s
    r = run([*args, "--data", str(tmp_path / "calib.txt"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["depth"]["dropped"] == [2] and report["verified"] and report["pruned_groups"] > 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    assert json.loads((out / "slimnet_plan.json").read_text())["depth"]["dropped"] == [2]
    assert report["model"] == f"hf:{folder}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the depth step's folder is gone


# ------------------------------------------------------------------------------------------ bad input
def _no_safetensors(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        f.unlink()


def _unknown(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))


def test_drop_layers_of_a_model_that_is_not_hf_is_one_line(tmp_path):
    r = run(["torchvision:resnet18", "--drop-layers", "1", "-o", str(tmp_path / "r.pt")])
    assert r.exit_code != 0 and "--drop-layers needs a Hugging Face decoder LM" in r.stderr
    assert not list(tmp_path.iterdir())


BAD = [
    (["--drop-layers", "4"], None, "the model has 4 decoder layers; give 0 <= N < 4"),
    (["--drop-layers", "-1"], None, "give 0 <= N < 4"),
    (["--drop-layers", "1", "--layer-rank", "magic"], None, "--layer-rank 'magic' is unknown"),
    (["--drop-layers", "1", "--no-data"], None, "give --data FILE.txt"),
    (["--drop-layers", "1", "-o", "x.pt"], None, "give -o NAME without .pt"),
    (["--drop-layers", "1", "--onnx", "m.onnx"], None, "--onnx with --drop-layers alone"),
    (["--drop-layers", "1"], _no_safetensors, "has no safetensors weights"),
    (["--drop-layers", "1"], _unknown, "is a 'gpt2' model: --drop-layers supports"),
]


@pytest.mark.parametrize(("args", "edit", "message"), BAD, ids=[b[2][:24] for b in BAD])
def test_bad_input_is_one_line_and_nothing_written(tmp_path, args, edit, message):
    folder = make(tmp_path, quiet=None)
    if edit is not None:
        edit(folder)
    before = sorted(p.name for p in tmp_path.iterdir())
    data = [] if "--no-data" in args else ["--data", str(tmp_path / "calib.txt")]
    extra = [a for a in args if a != "--no-data"]
    out = [] if "-o" in extra else ["-o", str(tmp_path / "out")]
    r = run([f"hf:{folder}", *extra, *data, *out])
    assert r.exit_code != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
