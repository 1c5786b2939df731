"""Hugging Face transformers: whole heads and MLP hidden units of BERT, GPT-2, ViT and a Llama-style decoder
with grouped-query attention, each built from a small config with random weights; exact, verified, and
reloaded from a saved folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimnet import plan as plan_mod
from slimnet.api import apply
from slimnet.cli import app
from slimnet.load.hf import from_pretrained, save_pretrained

from .helpers import check, cli_runner, kept, randomise

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()

SMALL = {"num_hidden_layers": 2, "max_position_embeddings": 32}


def bert() -> torch.nn.Module:
    cfg = tf.BertConfig(
        hidden_size=64, num_attention_heads=4, intermediate_size=96, vocab_size=50, num_labels=3, **SMALL
    )
    return randomise(tf.BertForSequenceClassification(cfg))


def gpt2() -> torch.nn.Module:
    cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0)
    return randomise(tf.GPT2LMHeadModel(cfg))


def llama() -> torch.nn.Module:
    cfg = tf.LlamaConfig(
        hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=96, vocab_size=50, **SMALL
    )
    return randomise(tf.LlamaForCausalLM(cfg))


def vit() -> torch.nn.Module:
    cfg = tf.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    return randomise(tf.ViTForImageClassification(cfg))


def tokens(n: int = 7) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 50, (1, n))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def heads_of(rows: list[int], head_dim: int) -> list[int]:
    """The heads a kept row list covers, asserting each is kept whole."""
    heads = sorted({r // head_dim for r in rows})
    assert rows == [h * head_dim + j for h in heads for j in range(head_dim)], "a head was cut inside"
    return heads


def test_bert_whole_heads_and_mlp():
    res = check(bert(), tokens(), criterion="l2")
    for layer in (0, 1):
        p = f"bert.encoder.layer.{layer}"
        q = heads_of(kept(res, f"{p}.attention.self.query.weight"), 16)
        assert len(q) == 2
        assert kept(res, f"{p}.attention.self.key.weight") == kept(res, f"{p}.attention.self.query.weight")
        assert kept(res, f"{p}.attention.self.value.weight") == kept(res, f"{p}.attention.self.query.weight")
        assert kept(res, f"{p}.attention.output.dense.weight", 1) == kept(res, f"{p}.attention.self.query.weight")
        assert len(kept(res, f"{p}.intermediate.dense.weight")) == 48
        att = res.model.bert.encoder.layer[layer].attention.self
        assert att.num_attention_heads == 2 and att.all_head_size == 32
    groups = {d["group"]: d for d in res.report["group_details"]}
    assert any(g.kind == "heads" for g in res.analysis.groups)
    assert "embeddings" in next(n for n, d in groups.items() if d["reason"] and "LayerNorm" in d["reason"])


def test_gpt2_fused_qkv_split_follows_pruning():
    res = check(gpt2(), tokens(), criterion="fpgm")
    rows = kept(res, "transformer.h.0.attn.c_attn.weight", 1)  # Conv1D: weight is [in, out]
    q, k, v = ([r - off for r in rows if off <= r < off + 64] for off in (0, 64, 128))
    assert q == k == v and len(heads_of(q, 16)) == 2
    attn = res.model.transformer.h[0].attn
    assert attn.split_size == 32 and attn.num_heads == 2 and attn.c_attn.nf == 96
    assert len(kept(res, "transformer.h.0.mlp.c_fc.weight", 1)) == 128
    assert kept(res, "lm_head.weight") is None  # tied to wte, the output: left whole


def test_llama_grouped_query_attention_keeps_groups_consistent():
    res = check(llama(), tokens(), criterion="l1")
    for layer in (0, 1):
        p = f"model.layers.{layer}.self_attn"
        kv = heads_of(kept(res, f"{p}.k_proj.weight"), 8)
        assert kv == heads_of(kept(res, f"{p}.v_proj.weight"), 8) and len(kv) == 1
        q = heads_of(kept(res, f"{p}.q_proj.weight"), 8)
        assert q == [h * 4 + j for h in kv for j in range(4)]  # 4 query heads per key/value head
        assert kept(res, f"{p}.o_proj.weight", 1) == kept(res, f"{p}.q_proj.weight")
        gate = kept(res, f"model.layers.{layer}.mlp.gate_proj.weight")
        assert (
            gate
            == kept(res, f"model.layers.{layer}.mlp.up_proj.weight")
            == kept(res, f"model.layers.{layer}.mlp.down_proj.weight", 1)
        )
        assert len(gate) == 48


def test_vit_heads_and_mlp():
    res = check(vit(), {"pixel_values": torch.randn(1, 3, 32, 32)}, criterion="l2")
    q = heads_of(kept(res, "vit.layers.0.attention.q_proj.weight"), 16)
    assert len(q) == 2 and kept(res, "vit.layers.0.attention.o_proj.weight", 1) == kept(
        res, "vit.layers.0.attention.q_proj.weight"
    )
    assert res.model.vit.layers[0].attention.num_attention_heads == 2


def test_head_ratio_applies_to_heads_only():
    res = check(bert(), tokens(), ratio=0.0, head_ratio=0.75)
    assert len(heads_of(kept(res, "bert.encoder.layer.0.attention.self.query.weight"), 16)) == 1
    assert kept(res, "bert.encoder.layer.0.intermediate.dense.weight") is None
    assert res.plan["head_ratio"] == 0.75


def gpt_neox() -> torch.nn.Module:
    cfg = tf.GPTNeoXConfig(hidden_size=64, num_attention_heads=4, intermediate_size=96, vocab_size=50, **SMALL)
    return randomise(tf.GPTNeoXForCausalLM(cfg))


def pixels(n: int = 1) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 3, 32, 32)}


def logits(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**x).logits


# GPT-NeoX and ViT: transformers 5 saves them under older key names (embed_out, attention.attention.query) and
# renames them back per class on loading; the loaders must get those renames too (they once failed on them).
@pytest.mark.parametrize(
    "make, inputs",
    [(bert, tokens), (gpt2, tokens), (llama, tokens), (gpt_neox, tokens), (vit, pixels)],
    ids=["bert", "gpt2", "llama", "gpt_neox", "vit"],
)
def test_save_pretrained_round_trip(tmp_path: Path, make, inputs):
    model = make()
    res = check(model, inputs())
    # the remote-code folder (a uniform Llama would be a standard one: tests/test_hf_standard.py)
    out = save_pretrained(res.model, res.plan, tmp_path / "slim", standard=False)
    assert json.loads((out / "config.json").read_text())["slimnet_plan"]["tensors"] == res.plan["tensors"]
    again = from_pretrained(out)
    assert type(again) is type(model)  # the original class: the reloaded model pickles like the original
    assert again.state_dict().keys() == res.model.state_dict().keys()
    for name, t in res.model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name
    x = inputs(2)
    # ViT's weights come back memory-mapped; its SDPA kernels then round differently in the last bit
    torch.testing.assert_close(logits(again, x), logits(res.model, x), rtol=0, atol=1e-6)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in res.model.parameters())
    with pytest.raises(Exception, match="mismatched|size"):  # transformers' own class refuses, loudly
        type(model).from_pretrained(out, local_files_only=True)
    # transformers' Auto loader with the folder's own code (slimnet_pruned.py) builds the pruned model
    import transformers

    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    auto = getattr(transformers, next(iter(auto_map)))
    native, info = auto.from_pretrained(out, trust_remote_code=True, local_files_only=True, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(native).__name__ == f"Slimnet{type(model).__name__}" and isinstance(native, type(model))
    torch.testing.assert_close(logits(native.eval(), x), logits(res.model, x), rtol=0, atol=1e-6)


def test_a_folder_whose_weights_do_not_fit_is_refused(tmp_path: Path):
    res = check(bert(), tokens())
    out = save_pretrained(res.model, res.plan, tmp_path / "slim")
    cfg = json.loads((out / "config.json").read_text())
    cfg["slimnet_plan"]["tensors"].pop(next(iter(cfg["slimnet_plan"]["tensors"])))  # one layer left unpruned
    (out / "config.json").write_text(json.dumps(cfg))
    from slimnet.errors import SlimnetError

    with pytest.raises(SlimnetError, match="cannot load|do not fit"):
        from_pretrained(out)


def test_opt_heads_follow_num_heads():
    cfg = tf.OPTConfig(
        hidden_size=64, num_attention_heads=4, ffn_dim=96, vocab_size=50, word_embed_proj_dim=64, **SMALL
    )
    res = check(randomise(tf.OPTForCausalLM(cfg)), tokens(), criterion="l2")
    p = "model.decoder.layers.0.self_attn"
    q = heads_of(kept(res, f"{p}.q_proj.weight"), 16)
    assert len(q) == 2 and kept(res, f"{p}.k_proj.weight") == kept(res, f"{p}.q_proj.weight")
    assert kept(res, f"{p}.out_proj.weight", 1) == kept(res, f"{p}.q_proj.weight")
    assert res.model.model.decoder.layers[0].self_attn.num_heads == 2


def test_deberta_v2_heads_despite_its_size_scale():
    """DeBERTa folds heads into the batch dim and scales by torch.tensor(q.size(-1)): the head size is a value,
    so only whole heads may go (a cut inside heads changed the scale and failed verification)."""
    cfg = tf.DebertaV2Config(
        hidden_size=64, num_attention_heads=4, intermediate_size=96, vocab_size=50, num_labels=3, **SMALL
    )
    res = check(randomise(tf.DebertaV2ForSequenceClassification(cfg)), tokens(), criterion="l1")
    p = "deberta.encoder.layer.0.attention.self"
    q = heads_of(kept(res, f"{p}.query_proj.weight"), 16)
    assert len(q) == 2 and kept(res, f"{p}.key_proj.weight") == kept(res, f"{p}.value_proj.weight") == kept(
        res, f"{p}.query_proj.weight"
    )
    assert res.model.deberta.encoder.layer[0].attention.self.num_attention_heads == 2


def test_falcon_new_architecture_keeps_whole_key_value_groups():
    cfg = tf.FalconConfig(
        hidden_size=64,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        vocab_size=50,
        num_hidden_layers=2,
    )
    res = check(randomise(tf.FalconForCausalLM(cfg)), tokens(), criterion="l1")
    for layer in (0, 1):
        p = f"transformer.h.{layer}"
        # the fused qkv holds, per key/value group, 2 query heads, then the key head and the value head
        groups = heads_of(kept(res, f"{p}.self_attention.query_key_value.weight"), 64)
        assert len(groups) == 1
        q_heads = [groups[0] * 2 + j for j in range(2)]
        assert heads_of(kept(res, f"{p}.self_attention.dense.weight", 1), 16) == q_heads
        att = res.model.transformer.h[layer].self_attention
        assert (att.num_heads, att.num_kv_heads) == (2, 1)
        assert len(kept(res, f"{p}.mlp.dense_h_to_4h.weight")) == 128  # FalconLinear is a Linear: MLP pruned


def test_cli_hf_folder_in_and_out(tmp_path: Path):
    src = tmp_path / "gpt2"
    gpt2().save_pretrained(src)
    inp = tmp_path / "inp.pt"
    torch.save(tokens(6), inp)
    runner = cli_runner()
    r = runner.invoke(
        app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "slim"), "--input", str(inp), "--round-to", "1", "--json"]
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["verified"] and report["params"][1] < report["params"][0]
    plan = plan_mod.load(tmp_path / "slim.plan.json")
    reloaded = from_pretrained(tmp_path / "slim")
    fresh, result = apply(from_pretrained(src), plan, tokens(6))
    assert result.passed
    with torch.no_grad():
        x = tokens(8)
        assert torch.equal(reloaded(**x).logits, fresh(**x).logits)
    # bench and export take hf: folders too, with token ids from the config (not an image tensor)
    r = runner.invoke(
        app,
        [
            "bench",
            f"hf:{src}",
            f"hf:{tmp_path / 'slim'}",
            "--backend",
            "torch-cpu",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    bench = json.loads(r.stdout)
    assert bench["models"][1]["params"] == report["params"][1] and bench["speedup"]["theoretical"] > 1.3
    r = runner.invoke(app, ["export", f"hf:{tmp_path / 'slim'}", "-o", str(tmp_path / "slim.onnx"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_abs_diff"] <= json.loads(r.stdout)["tolerance"]
    # the default input comes from the config; a missing folder is one clear line
    r = runner.invoke(app, ["graph", f"hf:{src}", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["prunable"] >= 4
    r = runner.invoke(app, ["graph", f"hf:{tmp_path / 'nope'}"])
    assert r.exit_code == 2 and "no such directory" in r.output


def test_timm_vit_fused_qkv_heads():
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    assert timm.__version__
    model = randomise(VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5))
    res = check(model, torch.randn(1, 3, 32, 32), criterion="fpgm")
    rows = kept(res, "blocks.0.attn.qkv.weight")
    q, k, v = ([r - off for r in rows if off <= r < off + 64] for off in (0, 64, 128))
    assert q == k == v and len(heads_of(q, 16)) == 2
    assert kept(res, "blocks.0.attn.proj.weight", 1) == q
    attn = res.model.blocks[0].attn
    assert attn.num_heads == 2 and attn.attn_dim == 32


def test_prune_embed_cuts_the_residual_stream_and_reports_the_difference():
    model = llama()
    x = tokens()
    exact = check(model, x)
    assert kept(exact, "model.embed_tokens.weight", 1) is None  # RMSNorm-normalised: left whole by default
    from slimnet.api import shrink

    res = shrink(model, x, ratio=0.5, round_to=1, prune_norm=True, measure=False)
    assert not res.report["exact"] and res.report["max_abs_diff"] > 0  # reported, not hidden
    width = kept(res, "model.embed_tokens.weight", 1)
    assert len(width) == 32
    for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert kept(res, name) == width
    assert kept(res, "model.layers.0.self_attn.q_proj.weight", 1) == width
    assert kept(res, "lm_head.weight", 1) == width
    with torch.no_grad():
        assert res.model(**tokens(9)).logits.shape == (1, 9, 50)


def test_pruned_bert_exports_to_onnx_with_parity(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from slimnet.exporting.onnx import export_onnx

    x = tokens(12)
    res = check(bert(), x)
    info = export_onnx(res.model, x, tmp_path / "bert.onnx")
    assert info["checker"] == "ok" and info["max_abs_diff"] <= info["tolerance"]
    assert info["inputs"] == ["input_ids", "attention_mask"] and info["dynamic_batch"]
    full = export_onnx(bert(), x, tmp_path / "full.onnx")
    assert info["bytes"] < full["bytes"]  # the pruned file is physically smaller
