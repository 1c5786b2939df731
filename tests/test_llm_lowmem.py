"""The low-memory path (slimnet.llm): a random 2-layer decoder of each family, saved in two safetensors shards,
shrunk one layer at a time, must give the in-memory path's pruned tensors bit for bit, the same plan, and the
same logits once transformers loads the output as a plain folder (no remote code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimnet.api import shrink
from slimnet.cli import app
from slimnet.errors import SlimnetError
from slimnet.llm.config import standard_config
from slimnet.llm.families import FAMILIES, streams
from slimnet.llm.shrink import PLAN_FILE, shrink_folder
from slimnet.load.hf import default_input, from_pretrained
from slimnet.settings import ShrinkSettings

from .helpers import cli_runner

tf = pytest.importorskip("transformers")
st = pytest.importorskip("safetensors.torch")
tf.logging.set_verbosity_error()

TINY = dict(
    hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=256,
    vocab_size=256, num_hidden_layers=2, max_position_embeddings=64,
)  # fmt: skip
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**TINY),
    "mistral": lambda: tf.MistralConfig(**TINY),
    "qwen2": lambda: tf.Qwen2Config(**TINY),  # q/k/v biases: members of the heads group
    "qwen3": lambda: tf.Qwen3Config(**TINY),  # q_norm/k_norm over head_dim
    "gemma": lambda: tf.GemmaConfig(**TINY),  # tied lm_head, (1 + w) norms, GELU MLP
    "phi3": lambda: tf.Phi3Config(**TINY, pad_token_id=0, bos_token_id=1, eos_token_id=2),  # fused qkv, gate_up
}


def write_model(folder: Path, family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """A random tiny decoder of ``family`` saved in (at least) two safetensors shards."""
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).to(dtype)
    with torch.no_grad():  # norms away from 1, so that the logits would show a misplaced norm weight
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(folder), max_shard_size="800KB" if dtype == torch.float32 else "400KB")
    assert len(list(folder.glob("*.safetensors"))) >= 2
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return folder


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(st.load_file(str(f)))
    return out


CASES = [
    ("llama", "l1", 0.5),
    ("mistral", "l2", 0.5),
    ("qwen2", "fpgm", 0.3),
    ("qwen3", "l1", 0.5),
    ("gemma", "l2", 0.25),
    ("phi3", "l1", 0.5),
]


@pytest.mark.parametrize("family,criterion,ratio", CASES)
def test_low_memory_matches_in_memory(tmp_path: Path, family: str, criterion: str, ratio: float) -> None:
    src = write_model(tmp_path / family, family)
    settings = ShrinkSettings(ratio=ratio, criterion=criterion)
    lines: list[str] = []
    report = shrink_folder(src, tmp_path / "low", settings, model_name=f"hf:{src}", log=lines.append,
                           shard_bytes=400_000)  # fmt: skip
    out = tmp_path / "low"
    assert any(line.startswith("layer 2/2") for line in lines)  # progress per layer
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) >= 2
    assert (out / "tokenizer_config.json").is_file() and (out / "generation_config.json").is_file()
    assert not (out / "slimnet_pruned.py").exists()

    model = from_pretrained(src)
    example = default_input(model)
    ref = shrink(model, example, settings=settings, model_name=f"hf:{src}", measure=False)
    want = ref.model.state_dict()
    got = folder_tensors(out)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert set(got) == set(want) - tied
    for name, t in got.items():
        assert t.dtype == want[name].dtype and torch.equal(t, want[name]), name
    plan = json.loads((out / PLAN_FILE).read_text())
    assert plan["tensors"] == ref.plan["tensors"] and plan["tensors"]
    assert {k: v for k, v in plan.items() if k != "version"} == {k: v for k, v in ref.plan.items() if k != "version"}
    assert report["params"][1] == sum(p.numel() for p in ref.model.parameters())

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head_dim"] == 32 and "slimnet_plan" not in cfg and "auto_map" not in cfg
    assert cfg["intermediate_size"] == got["model.layers.0.mlp.down_proj.weight"].shape[1]
    loaded = tf.AutoModelForCausalLM.from_pretrained(str(out)).eval()  # plain transformers, no remote code
    with torch.no_grad():
        assert torch.equal(loaded(**example).logits, ref.model(**example).logits)
    if family == "phi3":  # the fused q/k/v split follows config.num_attention_heads (a cut.sizes entry): both cut
        assert cfg["num_attention_heads"] < 4 and cfg["intermediate_size"] < 256
    else:
        heads = cfg["num_attention_heads"]
        assert got["model.layers.1.self_attn.q_proj.weight"].shape[0] == heads * 32
        assert got["model.layers.1.self_attn.k_proj.weight"].shape[0] == cfg["num_key_value_heads"] * 32
        assert heads // cfg["num_key_value_heads"] == 2  # GQA groups whole
        assert cfg["num_key_value_heads"] < 2 or ratio < 0.5


def test_bfloat16_and_head_ratio(tmp_path: Path) -> None:
    """bf16 stays bf16, bit for bit; --head-ratio applies to the key/value groups as in memory."""
    src = write_model(tmp_path / "m", "llama", seed=1, dtype=torch.bfloat16)
    settings = ShrinkSettings(ratio=0.25, head_ratio=0.5, criterion="l1")
    shrink_folder(src, tmp_path / "low", settings, log=None)
    model = from_pretrained(src)
    ref = shrink(model, default_input(model), settings=settings, measure=False)
    want, got = ref.model.state_dict(), folder_tensors(tmp_path / "low")
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, want[n]) for n, t in got.items())
    cfg = json.loads((tmp_path / "low" / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (2, 1, 192)


def test_errors_leave_nothing(tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", "llama")
    out = tmp_path / "out"
    # no safetensors
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((src / "config.json").read_text())
    (bare / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(SlimnetError, match="no \\*.safetensors"):
        shrink_folder(bare, out, ShrinkSettings(), log=None)
    # an architecture the path does not know
    gpt2 = tmp_path / "gpt2"
    tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(str(gpt2))
    with pytest.raises(SlimnetError, match="architecture 'gpt2'"):
        shrink_folder(gpt2, out, ShrinkSettings(), log=None)
    # a data criterion, a target
    with pytest.raises(SlimnetError, match="--in-memory"):
        shrink_folder(src, out, ShrinkSettings(criterion="random"), log=None)
    with pytest.raises(SlimnetError, match="--target"):
        shrink_folder(src, out, ShrinkSettings(target_params=0.5), log=None)
    # a shard that does not fit the config
    broken = tmp_path / "broken"
    write_model(broken, "llama")
    cfg = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 192}))
    with pytest.raises(SlimnetError, match="in config.json"):
        shrink_folder(broken, out, ShrinkSettings(), log=None)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_never_zero_kv_groups(tmp_path: Path) -> None:
    """A ratio that would leave a layer no key/value group is refused in one line, as the in-memory path refuses it
    (slimnet.allocate.decoder), and nothing is written; a head ratio that keeps one group passes; 1 is refused."""
    src = write_model(tmp_path / "m", "mistral")
    with pytest.raises(SlimnetError, match="leaves none of the 2 key/value groups"):
        shrink_folder(src, tmp_path / "low", ShrinkSettings(ratio=0.99), log=None)
    assert not (tmp_path / "low").exists()
    report = shrink_folder(src, tmp_path / "low", ShrinkSettings(ratio=0.99, head_ratio=0.75), log=None)
    assert report["kv_heads"] == [2, 1] and report["heads"] == [4, 2] and report["intermediate"][1] == 64
    with pytest.raises(SlimnetError, match="ratio"):
        ShrinkSettings(ratio=1.0)


def test_streams_only_plain_weight_criteria(tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", "qwen2")
    assert set(FAMILIES) == set(CONFIGS)
    assert streams(src, ShrinkSettings(criterion="fpgm"), plain=True)
    assert not streams(src, ShrinkSettings(), plain=False)
    assert not streams(src, ShrinkSettings(criterion="random"), plain=True)
    assert not streams(src, ShrinkSettings(use_global=True), plain=True)
    assert not streams(tmp_path / "nothing", ShrinkSettings(), plain=True)


def test_cli_dispatch(tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", "llama")
    runner = cli_runner()
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "low"), "--ratio", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["path"] == "low-memory" and report["heads"] == [4, 2]
    assert "layer 2/2" in r.stderr and (tmp_path / "low" / PLAN_FILE).is_file()
    # --in-memory: the whole-model path (its own folder layout)
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "mem"), "--in-memory", "--json"])
    assert r.exit_code == 0, r.output
    mem = json.loads(r.stdout)
    assert "path" not in mem and (tmp_path / "mem" / PLAN_FILE).exists()  # hf-std's folder too
    # one --json contract: the low-memory report carries the in-memory report's fields, with the same values
    for key in ("params_before", "params_after", "exact", "verified", "kept_share", "times_smaller", "timings"):
        assert key in report, key
    assert (report["params_before"], report["params_after"]) == (mem["params_before"], mem["params_after"])
    assert report["params"] == mem["params"] and report["kept_share"]["params"] == mem["kept_share"]["params"]
    assert report["exact"] is True and report["macs"] == [None, None] and report["kept_share"]["macs"] is None
    # --low-memory with something only the in-memory path does: one line, nothing written
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "x"), "--low-memory", "-c", "random"])
    assert r.exit_code != 0 and "--in-memory" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "low"), "--quiet"])  # output exists
    assert r.exit_code != 0 and "exists" in r.output


def test_standard_config_drops_slimnet_keys() -> None:
    cfg = {"model_type": "llama", "num_attention_heads": 32, "slimnet_plan": {}, "auto_map": {}, "hidden_size": 4096}
    out = standard_config(cfg, heads=24, kv_heads=6, intermediate=8192, head_dim=128)
    assert out == {"model_type": "llama", "num_attention_heads": 24, "num_key_value_heads": 6,
                   "intermediate_size": 8192, "head_dim": 128, "hidden_size": 4096}  # fmt: skip


def test_layer_verification_catches_a_wrong_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cut layer, built from the new config, is compared with its masked original; a cut that keeps other
    channels than the plan says (each kept index moved by one) fails it and nothing is written."""
    import slimnet.llm.shrink as lowmem
    from slimnet.errors import VerificationError

    src = write_model(tmp_path / "m", "qwen2")
    report = shrink_folder(src, tmp_path / "ok", ShrinkSettings(ratio=0.5), log=None)
    assert report["verified"] and 0 <= report["max_abs_diff"] <= report["tolerance"] < 1e-2
    exact = lowmem._sliced

    def shifted(t: torch.Tensor, dims: dict | None) -> torch.Tensor:
        moved = {d: sorted({(i + 1) % t.shape[int(d)] for i in idx}) for d, idx in (dims or {}).items()}
        return exact(t, moved)

    monkeypatch.setattr(lowmem, "_sliced", shifted)
    with pytest.raises(VerificationError, match="layer 0"):
        shrink_folder(src, tmp_path / "bad", ShrinkSettings(ratio=0.5), log=None)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "family,criterion", [("llama", "wanda"), ("qwen2", "activation"), ("phi3", "wanda"), ("gemma", "apoz")]
)
def test_data_criteria_layer_by_layer_match_in_memory(tmp_path: Path, family: str, criterion: str) -> None:
    """--data with wanda/activation/apoz takes the low-memory path by itself: the calibration hidden states go
    through one layer at a time, and the statistics, plan and tensors are the in-memory path's."""
    pytest.importorskip("tokenizers")
    from .test_llm_depth import LINES, save_tokenizer

    src = write_model(tmp_path / family, family)
    save_tokenizer(src)
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(LINES * 3) + "\n")
    runner = cli_runner()
    common = ["--criterion", criterion, "--ratio", "0.5", "--data", str(calib), "--calib-batches", "3",
              "--calib-batch-size", "4", "--json", "--quiet"]  # fmt: skip
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "low"), *common])
    assert r.exit_code == 0, r.output
    low = json.loads(r.stdout)
    assert low["path"] == "low-memory" and low["verified"] is True
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "mem"), *common, "--in-memory"])
    assert r.exit_code == 0, r.output
    got, want = folder_tensors(tmp_path / "low"), folder_tensors(tmp_path / "mem")
    assert set(got) == set(want)
    for name, t in got.items():
        assert torch.equal(t, want[name]), name
    p_low = json.loads((tmp_path / "low" / PLAN_FILE).read_text())["tensors"]
    p_mem = json.loads((tmp_path / "mem" / PLAN_FILE).read_text())["tensors"]
    assert p_low == p_mem and p_low
    r = runner.invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "l1"), "--ratio", "0.5", "--quiet"])
    assert r.exit_code == 0, r.output
    if criterion == "wanda":  # the data changed the choice: not the weight ranking under another name
        assert json.loads((tmp_path / "l1" / PLAN_FILE).read_text())["tensors"] != p_low


def test_low_memory_data_criterion_without_data_is_refused(tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", "llama")
    r = cli_runner().invoke(app, ["shrink", f"hf:{src}", "-o", str(tmp_path / "x"), "--low-memory", "-c", "wanda"])
    assert r.exit_code != 0 and "--data" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()
