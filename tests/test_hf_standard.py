"""Llama-style decoders shrunk to a *standard* transformers folder (issue 24 item 2): the same widths in every
layer, attention cut in whole key/value groups, MLP widths in 64s; config.json states the new widths and
``AutoModelForCausalLM.from_pretrained`` loads it without remote code, computing exactly what the shrunk model
computes. Each family is a random 2-layer model (hidden 128, 4 heads, 2 key/value heads, head_dim 32, MLP 256)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from slimnet import plan as plan_mod
from slimnet.cli import app
from slimnet.cut.surgeon import mask_plan
from slimnet.errors import SlimnetError
from slimnet.load.hf import (
    PLAN_FILE,
    PLAN_KEY,
    REMOTE_FILE,
    default_input,
    save_folder,
    save_pretrained,
    standard_config,
    standard_widths,
)

from .helpers import check, cli_runner, kept, randomise

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

SIZES = dict(
    num_hidden_layers=2,
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=256,
    vocab_size=256,
    max_position_embeddings=64,
)
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # inside the tiny vocabulary
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),  # q/k norms over head_dim
    "gemma": ("GemmaConfig", "GemmaForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),  # fused qkv_proj and gate_up_proj
}
#: --ratio 0.3 keeps 1.4 of 2 key/value groups (1: 2 query heads) and 179.2 of 256 MLP units: 192, the nearest
#: multiple of 64 (--round-to 8 alone would keep 176)
RATIO = 0.3


def decoder(family: str) -> torch.nn.Module:
    config_cls, model_cls = (getattr(tf, n) for n in FAMILIES[family])
    return randomise(model_cls(config_cls(**SIZES, **TOKENS)))


def saved(family: str, folder: Path) -> Path:
    decoder(family).save_pretrained(folder)
    return folder


def logits(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


def kv_and_query_heads(res, layer: int) -> tuple[list[int], list[int]]:
    """The key/value heads and query heads layer ``layer`` keeps, each asserted whole (all head_dim rows)."""
    p = f"model.layers.{layer}.self_attn"

    def heads(rows: list[int]) -> list[int]:
        hs = sorted({r // 32 for r in rows})
        assert rows == [h * 32 + j for h in hs for j in range(32)], "a head was cut inside"
        return hs

    if f"{p}.qkv_proj.weight" in res.plan["tensors"]:
        rows = kept(res, f"{p}.qkv_proj.weight")
        q = [r for r in rows if r < 128]
        k = [r - 128 for r in rows if 128 <= r < 192]
        v = [r - 192 for r in rows if r >= 192]
    else:
        q, k, v = (kept(res, f"{p}.{n}_proj.weight") for n in "qkv")
    assert k == v and kept(res, f"{p}.o_proj.weight", 1) == q
    return heads(k), heads(q)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_standard_folder_loads_without_remote_code(tmp_path: Path, family: str):
    src = saved(family, tmp_path / "src")
    out = tmp_path / "slim"
    runner = cli_runner()
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(out), "--ratio", str(RATIO), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["folder"] == "standard" and report["folder_note"] is None and report["verified"]
    assert (report["round_to"], report["mlp_round_to"]) == (8, 64)
    # config.json states the new widths; no plan, no remote code in it
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (2, 1, 192)
    assert cfg["head_dim"] == 32 and cfg["hidden_size"] == 128 and cfg["num_hidden_layers"] == 2
    assert PLAN_KEY not in cfg and "auto_map" not in cfg and not (out / REMOTE_FILE).exists()
    plan = plan_mod.load(out / PLAN_FILE)  # the plan beside the weights, the same as the one beside the folder
    assert plan == plan_mod.load(tmp_path / "slim.plan.json")

    # the same shrink through the API: the same plan, whole key/value groups, the same counts in every layer
    original = tf.AutoModelForCausalLM.from_pretrained(src).eval()
    x = default_input(original)
    res = check(original, x, ratio=RATIO, round_to=8)
    assert res.plan["tensors"] == plan["tensors"]
    for layer in (0, 1):
        kv, q = kv_and_query_heads(res, layer)
        assert len(kv) == 1 and q == [kv[0] * 2, kv[0] * 2 + 1]  # a key/value head with its 2 query heads
        mlp = "gate_up_proj" if family == "phi3" else "gate_proj"
        assert len(kept(res, f"model.layers.{layer}.mlp.{mlp}.weight")) == (384 if family == "phi3" else 192)

    # transformers' own class loads the folder, every tensor fitting, and computes what the shrunk model computes
    loaded, info = tf.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(loaded) is type(original)
    if family == "qwen3":  # the q/k norms stay head_dim wide
        assert loaded.model.layers[0].self_attn.q_norm.weight.shape == (32,)
    x2 = {"input_ids": torch.randint(0, 256, (2, 11)), "attention_mask": torch.ones(2, 11, dtype=torch.long)}
    got = logits(loaded.eval(), x2)
    assert torch.equal(got, logits(res.model, x2))
    masked = mask_plan(copy.deepcopy(original), plan)
    torch.testing.assert_close(got, logits(masked, x2), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in res.model.parameters())


def test_non_uniform_widths_keep_the_remote_code_folder_and_say_why(tmp_path: Path):
    src = saved("llama", tmp_path / "src")
    ratios = tmp_path / "ratios.json"
    ratios.write_text(json.dumps({"model.layers.1.mlp.gate_proj": 0.75}))
    r = cli_runner().invoke(
        app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "slim"), "--ratios", str(ratios), "--json"]
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["folder"] == "remote-code"
    assert (
        "different widths" in report["folder_note"]
        and "layer 1: 4 heads, 2 key/value heads, MLP 64" in report["folder_note"]
    )
    cfg = json.loads((tmp_path / "slim" / "config.json").read_text())
    assert cfg["intermediate_size"] == 256 and PLAN_KEY in cfg and "auto_map" in cfg
    loaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "slim", trust_remote_code=True)
    assert loaded.model.layers[1].mlp.gate_proj.out_features == 64
    assert loaded.model.layers[0].mlp.gate_proj.out_features == 256  # --ratios alone: the rest left whole
    # the text output says it too
    r = cli_runner().invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "slim2"), "--ratios", str(ratios)])
    assert r.exit_code == 0 and "not a standard transformers folder" in r.output, r.output
    # asking for the standard folder where it cannot be is one clear error, nothing written
    res = check(decoder("llama"), default_input(loaded), ratios={"model.layers.1.mlp.gate_proj": 0.75})
    with pytest.raises(SlimnetError, match="different widths"):
        save_pretrained(res.model, res.plan, tmp_path / "std", standard=True)
    assert not (tmp_path / "std").exists()


def test_unknown_architecture_falls_back_with_a_note(tmp_path: Path):
    gpt2 = randomise(tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=50, n_positions=32)))
    ids = torch.randint(0, 50, (1, 7))
    res = check(gpt2, {"input_ids": ids})
    written = save_folder(res.model, res.plan, tmp_path / "slim")
    assert written["format"] == "remote-code" and "GPT2LMHeadModel is not one of" in written["note"]
    assert "auto_map" in json.loads((tmp_path / "slim" / "config.json").read_text())


def test_a_ratio_that_leaves_no_key_value_group_is_refused(tmp_path: Path):
    src = saved("qwen2", tmp_path / "src")
    out = tmp_path / "slim"
    r = cli_runner().invoke(app, ["shrink", f"hf:{src}", "-o", str(out), "--head-ratio", "0.8"])
    assert r.exit_code != 0
    assert "leaves none of the 2 key/value groups" in r.output and "--head-ratio at most 0.75" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists() and not (tmp_path / "slim.plan.json").exists()
    r = cli_runner().invoke(app, ["shrink", f"hf:{src}", "-o", str(out), "--ratio", "0.8"])
    assert r.exit_code != 0 and "give --head-ratio at most 0.75 for attention" in r.output, r.output
    assert not out.exists()
    # --head-ratio 0.75 keeps one group per layer (2 of 4 query heads)
    r = cli_runner().invoke(app, ["shrink", f"hf:{src}", "-o", str(out), "--head-ratio", "0.75", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 1


def test_a_folder_without_safetensors_is_refused(tmp_path: Path):
    src = saved("llama", tmp_path / "src")
    for f in src.glob("*.safetensors"):
        f.unlink()
    r = cli_runner().invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "slim")])
    assert r.exit_code != 0 and "has no weights (no *.safetensors file)" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "slim").exists()
    assert not (tmp_path / "slim.plan.json").exists()


def test_standard_widths_says_what_a_config_cannot_state():
    config = {**SIZES, "model_type": "llama", PLAN_KEY: {"tensors": {}}, "auto_map": {"AutoModel": "x.Y"}}
    q, o = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"
    full = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256, "head_dim": 32}
    assert standard_widths(config, {"tensors": {}}) == (full, "")
    cases = {
        "a head is cut inside": {q: {"0": list(range(16))}, o: {"1": list(range(16))}},
        "are not the 2 heads of each kept key/value head": {
            q: {"0": list(range(32))},
            o: {"1": list(range(32))},
        },
        "which config.json cannot state": {"model.embed_tokens.weight": {"1": list(range(64))}},
        "different widths": {
            f"model.layers.1.mlp.{p}_proj.weight": {"0" if p != "down" else "1": list(range(64))}
            for p in ("gate", "up", "down")
        },
    }
    for why, tensors in cases.items():
        widths, reason = standard_widths(config, {"tensors": tensors})
        assert widths is None and why in reason, (why, reason)
    # the rewrite: new widths, head_dim explicit, the plan and the remote-code keys gone, the rest as it was
    new = standard_config(config, {**full, "num_attention_heads": 2, "num_key_value_heads": 1})
    assert (new["num_attention_heads"], new["num_key_value_heads"], new["head_dim"]) == (2, 1, 32)
    assert PLAN_KEY not in new and "auto_map" not in new and new["model_type"] == "llama"
    assert config["num_attention_heads"] == 4  # the input is left as it was


def test_phi3_layers_with_their_own_head_counts(tmp_path: Path):
    """Phi-3 slices its fused qkv at ``config.num_attention_heads * head_dim``: a layer cut alone gets a config of
    its own (the shared one cannot hold one layer's count), and the remote-code folder reloads it both ways."""
    model = decoder("phi3")
    x = default_input(model)
    res = check(model, x, ratio=0.0, ratios={"model.layers.1.self_attn.qkv_proj": 0.5})
    layers = res.model.model.layers
    assert [(a.self_attn.config.num_attention_heads, a.self_attn.num_key_value_heads) for a in layers] == [
        (4, 2),
        (2, 1),
    ]
    assert res.model.config.num_attention_heads == 4  # the model's own config is the original's
    written = save_folder(res.model, res.plan, tmp_path / "slim")
    assert written["format"] == "remote-code" and "layer 1: 2 heads, 1 key/value heads" in written["note"]
    native = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "slim", trust_remote_code=True).eval()
    assert torch.equal(logits(native, x), logits(res.model, x))
