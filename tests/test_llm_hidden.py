"""``--hidden-ratio`` (slimnet.llm.hidden): the residual stream of a random 2-layer decoder of each supported
family cut from 128 to 64 channels. The written folder must load with plain transformers and give, in float64,
the logits of the masked original built here independently (dropped channels zeroed in the embeddings and in
o_proj/down_proj, norms rescaled, epsilons scaled), its tensors the original's kept slices, its channels the
most active ones; the approximation is reported as such; bad input is one line with nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slimnet.cli import app
from slimnet.errors import SlimnetError, VerificationError
from slimnet.llm import depth, hidden

from .helpers import cli_runner
from .test_llm_depth import LINES, save_tokenizer

tf = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
tf.logging.set_verbosity_error()

SIZES = dict(
    hidden_size=128, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=256,
    num_hidden_layers=2, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**SIZES),
    "mistral": lambda: tf.MistralConfig(**SIZES),
    "qwen2": lambda: tf.Qwen2Config(**SIZES),  # q/k/v biases: no residual axis
    "qwen3": lambda: tf.Qwen3Config(**SIZES, head_dim=32),  # q_norm/k_norm over head_dim: untouched
    "phi3": lambda: tf.Phi3Config(**SIZES, pad_token_id=0),  # fused qkv_proj and gate_up_proj
    "gemma": lambda: tf.GemmaConfig(**SIZES, head_dim=32),
}
LOUD = list(range(0, 128, 5))[:24]  # channels made much more active than the rest: they must be kept


def make(tmp_path: Path, kind: str = "llama", tied: bool = False) -> Path:
    torch.manual_seed(0)
    cfg = CONFIGS[kind]()
    cfg.tie_word_embeddings = tied
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.03)  # small writes: the embedding decides which channels are active
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
        emb = model.get_input_embeddings().weight  # the loud channels: +-3 in every token's embedding
        emb[:, LOUD] = 3.0 * torch.sign(emb[:, LOUD])
    folder = tmp_path / kind
    model.save_pretrained(folder, max_shard_size="200KB")
    assert len(list(folder.glob("*.safetensors"))) >= 2
    save_tokenizer(folder)
    (tmp_path / "calib.txt").write_text("\n".join(LINES) + "\n")
    return folder


def batches(folder: Path, calib: Path) -> list[dict[str, torch.Tensor]]:
    return depth.text_batches(depth.inspect_folder(folder), str(calib), 3, 2)


def masked_reference(original: torch.nn.Module, cut: torch.nn.Module, kept: list[int]) -> torch.nn.Module:
    """The original (float64) with the dropped channels zeroed where the stream is written, norms the cut's."""
    h, k = original.config.hidden_size, len(kept)
    drop = torch.ones(h, dtype=torch.bool)
    drop[kept] = False
    written = dict(cut.named_parameters())
    with torch.no_grad():
        original.get_input_embeddings().weight[:, drop] = 0.0
        for name, p in original.named_parameters():
            if "o_proj" in name or "down_proj" in name:
                p[drop] = 0.0
            elif "layernorm" in name or name == "model.norm.weight":
                p[drop] = 0.0
                p[~drop] = written[name] * math.sqrt(k / h)
        for mod in original.modules():
            if hasattr(mod, "variance_epsilon") and getattr(mod, "weight", None) is not None:
                if mod.weight.shape == (h,):
                    mod.variance_epsilon *= k / h
    return original


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3", "phi3"])
def test_cut_is_the_masked_original(tmp_path: Path, kind: str) -> None:
    src = make(tmp_path, kind)
    source = depth.inspect_folder(src)
    data = batches(src, tmp_path / "calib.txt")
    res = hidden.cut_hidden(source, 0.5, data, tmp_path / "out")
    out = tmp_path / "out"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 64 and cfg["head_dim"] == 32 and res.hidden == (128, 64)
    assert set(LOUD) <= set(res.kept) and len(res.kept) == 64 and res.kept == sorted(res.kept)
    orig = tf.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float64).eval()
    cut = tf.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float64).eval()  # no remote code
    # tensors: the kept slices of the original, norm weights times their measured scale
    o, c = dict(orig.named_parameters()), dict(cut.named_parameters())
    kept = torch.tensor(res.kept)
    assert torch.equal(c["model.embed_tokens.weight"], o["model.embed_tokens.weight"][:, kept])
    assert torch.equal(c["lm_head.weight"], o["lm_head.weight"][:, kept])
    down = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(c[down], o[down][kept])
    norm = "model.layers.0.input_layernorm.weight"
    scale = res.scales[norm]
    # rms(kept)/rms(all) <= sqrt(128/64); near it, as the loud channels carry most of the energy and are kept
    assert 1.2 < scale <= math.sqrt(2) + 1e-12 and torch.allclose(c[norm], o[norm][kept] * scale, rtol=1e-6)
    assert c["model.norm.weight"].shape == (64,)
    # logits: the cut model is the masked original, exactly (float64)
    ref = masked_reference(orig, cut, res.kept)
    with torch.no_grad():
        for b in data:
            got, want = cut(**b).logits, ref(**b).logits
            assert float(want.abs().max()) > 0.1
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())  # RMSNorm runs in float32
    # and an approximation of the original, said so
    report = res.describe()
    assert report["exact"] is False and 0.0 < report["approximation"]["kl"]
    assert 0.0 <= report["approximation"]["top1_agreement"] <= 1.0 and report["max_rel_diff"] <= 1e-5
    assert res.params[1] < res.params[0]


def test_norm_rescaling_brings_the_cut_nearer_the_original(tmp_path: Path) -> None:
    """The measured rms(kept)/rms(all) scale beats no scale: the KL to the original is smaller with it."""
    src = make(tmp_path)
    source = depth.inspect_folder(src)
    data = batches(src, tmp_path / "calib.txt")
    res = hidden.cut_hidden(source, 0.5, data, tmp_path / "scaled")
    plain = tf.AutoModelForCausalLM.from_pretrained(str(src)).eval()
    ones = {k: 1.0 for k in res.scales}
    hidden.write_hidden(source, res.kept, ones, _empty(tmp_path / "unscaled"), {})
    kl_unscaled = hidden.verify_hidden(plain, tmp_path / "unscaled", res.kept, ones, data, 128, torch.float32)[1]["kl"]
    assert res.approximation["kl"] < kl_unscaled


def _empty(p: Path) -> Path:
    p.mkdir()
    return p


def test_a_wrong_cut_fails_verification_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make(tmp_path)
    source = depth.inspect_folder(src)
    real = hidden.write_hidden

    def shifted(source, kept, scales, dest, entry):  # one wrong channel kept
        other = next(i for i in range(128) if i not in kept)
        return real(source, [*kept[:-1], other], scales, dest, entry)

    monkeypatch.setattr(hidden, "write_hidden", shifted)
    with pytest.raises(VerificationError, match="verification failed"):
        hidden.cut_hidden(source, 0.5, batches(src, tmp_path / "calib.txt"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_misplaced_row_fails_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Norms right, one write to the stream in the wrong channel: the logits check finds it."""
    st = pytest.importorskip("safetensors.torch")
    src = make(tmp_path)
    source = depth.inspect_folder(src)
    real = hidden.write_hidden

    def swapped(source, kept, scales, dest, entry):
        params = real(source, kept, scales, dest, entry)
        key = "model.layers.1.mlp.down_proj.weight"
        shard = dest / source.weight_map[key]
        tensors = st.load_file(str(shard))
        tensors[key] = tensors[key][[1, 0, *range(2, 64)]].contiguous()
        st.save_file(tensors, str(shard), metadata={"format": "pt"})
        return params

    monkeypatch.setattr(hidden, "write_hidden", swapped)
    with pytest.raises(VerificationError, match="masked original's by"):
        hidden.cut_hidden(source, 0.5, batches(src, tmp_path / "calib.txt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_axes_table_knows_every_tensor_and_refuses_others() -> None:
    assert hidden.axis_of("model.layers.3.self_attn.q_proj.weight") == 1
    assert hidden.axis_of("model.layers.3.mlp.down_proj.weight") == 0
    assert hidden.axis_of("model.layers.3.self_attn.q_norm.weight") is None
    assert hidden.axis_of("model.norm.weight") == 0 and hidden.is_norm("model.layers.0.input_layernorm.weight")
    with pytest.raises(SlimnetError, match="does not know tensor"):
        hidden.axis_of("model.layers.0.block_sparse_moe.gate.weight")
    assert hidden.kept_size(576, 0.1) == 512 and hidden.kept_size(4096, 0.25, heads=32) == 3072
    assert hidden.kept_size(576, 0.125, heads=9) == 504  # lcm(64, 9) is the whole width: steps of lcm(8, 9)
    assert hidden.kept_size(128, 0.5, heads=4) == 64


def test_cli(tmp_path: Path) -> None:
    src = make(tmp_path)
    calib = str(tmp_path / "calib.txt")
    runner = cli_runner()
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "h"), "--hidden-ratio", "0.5", "--data",
                            calib, "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["exact"] is False and rep["verified"] is True and rep["hidden"]["hidden_after"] == 64
    assert rep["params_before"] > rep["params_after"] == rep["params"][1]
    plan = json.loads((tmp_path / "h" / "slimnet_plan.json").read_text())
    assert plan["hidden"]["hidden_size"] == [128, 64] and len(plan["hidden"]["kept"]) == 64
    # text report: says it is approximate
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "t"), "--hidden-ratio", "0.5", "--data",
                            calib, "--quiet"])  # fmt: skip
    assert r.exit_code == 0 and "APPROXIMATE" in r.stdout and "128 -> 64" in r.stdout
    # depth, then the residual width, then the width: all three recorded, the whole called approximate
    args = ["--drop-layers", "1", "--hidden-ratio", "0.5", "--ratio", "0.5", "--data", calib, "--json", "--quiet"]
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "all"), *args])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["exact"] is False and rep["depth"]["layers_after"] == 1 and rep["hidden"]["hidden_after"] == 64
    cfg = json.loads((tmp_path / "all" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["hidden_size"] == 64
    plan = json.loads((tmp_path / "all" / "slimnet_plan.json").read_text())
    assert {"depth", "hidden"} <= set(plan) and plan["hidden"]["hidden_size"] == [128, 64]
    model = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "all"))
    assert model.config.hidden_size == 64 and model.model.layers[0].mlp.down_proj.weight.shape == (64, 64)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    src = make(tmp_path)
    gemma = make(tmp_path, "gemma", tied=True)
    calib = str(tmp_path / "calib.txt")
    runner = cli_runner()
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        ([f"hf:{gemma}", "--hidden-ratio", "0.5", "--data", calib], "sqrt(hidden_size)"),
        ([f"hf:{src}", "--hidden-ratio", "0.02", "--data", calib], "keeps all 128"),
        ([f"hf:{src}", "--hidden-ratio", "1.5", "--data", calib], "0 < R < 1"),
        ([f"hf:{src}", "--hidden-ratio", "0.5"], "give --data"),
        (["torchvision:resnet18", "--hidden-ratio", "0.5"], "Hugging Face decoder LM"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["shrink", *args, "-o", str(tmp_path / "x")])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == before
