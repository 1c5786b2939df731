"""Distillation of decoder LMs at scale (slimnet/llm/): the chunked logit KL equals the whole one (value and
gradients), warm-up + cosine, windows and each rank's share; 2 gloo processes with FSDP2 follow the same loss
trajectory and end at the same weights as 1 process with the same global batch; resuming from a checkpoint ends
at the weights of an uninterrupted run; the output loads with AutoModelForCausalLM in the student's shapes; bad
input is one line with nothing written.

The models are tiny random Llamas (2 layers, hidden 64, vocab 256) with a word-level tokenizer built here (no
downloads). Two processes are forked from the test (gloo on a free port) so that they share its imports: a
torchrun start-up costs two fresh imports of torch and transformers; one slow test runs real torchrun."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import traceback
from pathlib import Path

import pytest
import torch

from .helpers import cli_runner, run_group

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

VOCAB = 256
WORDS = [f"w{i}" for i in range(VOCAB - 1)]  # + [UNK]


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(str(folder))


def _llama(
    folder: Path, intermediate: int, kv: int, seed: int, vocab: int = VOCAB, plan: bool = False, tied: bool = False
) -> Path:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=intermediate,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv,
                                   max_position_embeddings=128, tie_word_embeddings=tied)  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # peaked next-token distributions, as a trained model's (random init: near uniform)
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(str(folder))
    if plan:
        (folder / "slimnet_plan.json").write_text(json.dumps({"format": "slimnet.plan/1", "tensors": {}}))
    return folder


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A teacher with its tokenizer, a narrower student (MLP 128 -> 64, 2 -> 1 KV heads: what a uniform width cut
    writes, with slimnet_plan.json beside it and no tokenizer), and a text of random words."""
    root = tmp_path_factory.mktemp("lms")
    teacher = _llama(root / "teacher", 128, 2, seed=0)
    _tokenizer(teacher)
    student = _llama(root / "student", 64, 1, seed=1, plan=True)
    gen = torch.Generator().manual_seed(0)
    # a text with structure to learn: each word mostly followed by the next one
    ids = torch.randint(0, VOCAB - 1, (40,), generator=gen)
    words = []
    for start in ids.tolist():
        words += [WORDS[(start + k) % (VOCAB - 1)] for k in range(int(torch.randint(5, 30, (1,), generator=gen)))]
    text = root / "text.txt"
    text.write_text("\n".join(" ".join(words[i : i + 12]) for i in range(0, len(words), 12)) + "\n")
    return {"teacher": teacher, "student": student, "text": text, "root": root}


def _args(lms: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["distill", f"hf:{lms['student']}", "--teacher", f"hf:{lms['teacher']}", "--data", str(lms["text"]),
            "--window", "16", "--batch-size", "4", "--steps", "4", "--lr", "3e-3", "--device", "cpu",
            "--json", "-o", str(out), *extra]  # fmt: skip


def _cli(args: list[str]) -> tuple[int, str, str]:
    from slimnet.cli import app

    res = cli_runner().invoke(app, args)
    return res.exit_code, res.stdout, res.stderr


def _report(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


# ------------------------------------------------------------------------------------------ the loss
def test_chunked_kl_equals_the_whole_kl_in_value_and_gradients():
    from slimnet.llm.kl import Head, kl_sum, whole_kl_sum

    torch.manual_seed(0)
    n, hs, ht, vocab, temp = 37, 12, 16, 50, 2.0
    s_h = torch.randn(n, hs, requires_grad=True)
    w_s = (torch.randn(vocab, hs) * 0.5).requires_grad_()
    t_h, w_t = torch.randn(n, ht), torch.randn(vocab, ht) * 0.5
    whole = whole_kl_sum(s_h @ w_s.T, t_h @ w_t.T, temp)
    g_h, g_w = torch.autograd.grad(whole, [s_h, w_s])
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=t_h @ w_t.T / temp),
        torch.distributions.Categorical(logits=(s_h @ w_s.T / temp).detach()),
    ).sum()
    assert torch.allclose(whole.detach(), ref, rtol=1e-5)  # KL(teacher || student), summed over tokens
    for chunk in (1, 5, 36, 37, 100):
        value = kl_sum(s_h, Head(w_s), t_h, Head(w_t), temp, chunk)
        c_h, c_w = torch.autograd.grad(value, [s_h, w_s])
        assert torch.allclose(value, whole, rtol=1e-5, atol=1e-5), chunk
        assert torch.allclose(c_h, g_h, rtol=1e-4, atol=1e-6) and torch.allclose(c_w, g_w, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # evaluation: no graph, same value
        assert torch.allclose(kl_sum(s_h, Head(w_s), t_h, Head(w_t), temp, 7), whole, rtol=1e-5, atol=1e-5)


def test_chunked_kl_never_holds_all_logits_for_backward():
    """Memory saved for backward: only the hidden states, not a chunk's logits per chunk (recomputed)."""
    from slimnet.llm.kl import Head, kl_sum

    n, vocab = 64, 4000
    s_h, w_s = torch.randn(n, 8, requires_grad=True), torch.randn(vocab, 8, requires_grad=True)
    t_h, w_t = torch.randn(n, 8), torch.randn(vocab, 8)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kl_sum(s_h, Head(w_s), t_h, Head(w_t), 2.0, 8)
    assert saved and max(saved) < n * vocab / 4  # never the whole [tokens, vocab] logits


def test_schedule_warms_up_then_decays_to_zero_along_a_cosine():
    from slimnet.llm.distill import make_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = make_scheduler(opt, steps=20, warmup=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    import math

    assert lrs[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 16)) for k in range(16)])
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.01


# ------------------------------------------------------------------------------------------ windows
def test_windows_are_cut_from_the_text_and_shared_between_ranks_by_seed():
    from slimnet.llm.windows import Windows

    ids = torch.arange(1000)
    w = Windows(ids, window=10)
    assert len(w.train) + len(w.held) == 100 and len(w.held) == 8
    assert torch.equal(w.train[0], torch.arange(10)) and torch.equal(w.held[-1], torch.arange(990, 1000))
    for step in range(30):
        whole = w.batch(step, rank=0, world=1, batch_size=8, seed=3)
        shares = [w.batch(step, rank=r, world=4, batch_size=8, seed=3) for r in range(4)]
        assert whole.shape == (8, 10) and all(s.shape == (2, 10) for s in shares)
        assert torch.equal(torch.cat(shares), whole)  # each rank its share of the same global batch
    one_epoch = torch.cat([w.batch(s, 0, 1, 8, seed=3) for s in range(len(w.train) // 8)])
    assert len({int(r[0]) for r in one_epoch}) == len(one_epoch)  # no window twice within an epoch
    assert not torch.equal(w.batch(0, 0, 1, 8, seed=3), w.batch(0, 0, 1, 8, seed=4))
    assert torch.equal(w.batch(5, 0, 1, 8, seed=3), Windows(ids, window=10).batch(5, 0, 1, 8, seed=3))


def test_text_shorter_than_a_window_is_refused():
    from slimnet.errors import SlimnetError
    from slimnet.llm.windows import Windows

    with pytest.raises(SlimnetError, match="shorter than one window"):
        Windows(torch.arange(15), window=16)


# ------------------------------------------------------------------------------------------ processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, args: list[str], log: str) -> None:
    """One forked rank: the command line as torchrun would start it (its environment variables)."""
    code = 1
    try:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))  # fmt: skip
        torch.set_num_threads(1)
        from slimnet.cli import app

        res = cli_runner().invoke(app, args, catch_exceptions=False)
        Path(f"{log}.{rank}").write_text(json.dumps([res.exit_code, res.stdout, res.stderr]))
        code = res.exit_code
    except BaseException:  # noqa: BLE001 - written for the test to show
        Path(f"{log}.{rank}").write_text(json.dumps([1, "", traceback.format_exc()]))
    finally:
        sys.stdout.flush()
        os._exit(code)


def _two_ranks(args: list[str], log: Path) -> list[tuple[int, str, str]]:
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, args, str(log))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        if p.is_alive():
            p.kill()
    return [tuple(json.loads(Path(f"{log}.{r}").read_text())) for r in range(2)]


@pytest.mark.usefixtures("one_thread")
def test_two_gloo_processes_with_fsdp_match_one_process_and_the_kl_falls(lms, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    code, stdout, stderr = _cli(_args(lms, one))
    assert code == 0, stderr
    single = _report(stdout)
    ranks = _two_ranks(_args(lms, two), tmp_path / "log")
    assert [r[0] for r in ranks] == [0, 0], ranks
    double = _report(ranks[0][1])
    assert ranks[1][1].strip() == ""  # rank 0 alone prints and writes
    assert single["world_size"] == 1 and double["world_size"] == 2 and double["sharding"] == "fsdp2"
    a, b = [h["loss"] for h in single["history"]], [h["loss"] for h in double["history"]]
    assert len(a) == len(b) == 4 and a == pytest.approx(b, rel=1e-4)
    assert a[-1] < a[0]  # the KL falls over a few steps
    assert double["held_out"]["end"]["kl"] < double["held_out"]["start"]["kl"]
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), k
    # the output: the student's folder format, loadable by transformers' own class, the student's shapes
    start = _weights(lms["student"])
    assert {k: v.shape for k, v in w2.items()} == {k: v.shape for k, v in start.items()}
    assert any(not torch.equal(w2[k], start[k]) for k in start)
    assert json.loads((two / "config.json").read_text()) == json.loads((lms["student"] / "config.json").read_text())
    assert (two / "slimnet_plan.json").read_text() == (lms["student"] / "slimnet_plan.json").read_text()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(two), local_files_only=True)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (64, 64)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (16, 64)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left


@pytest.mark.usefixtures("one_thread")
def test_resume_from_a_checkpoint_ends_at_the_uninterrupted_weights(lms, tmp_path):
    ck = tmp_path / "ck"
    code, stdout, stderr = _cli(_args(lms, tmp_path / "whole", "--checkpoint-dir", str(ck), "--checkpoint-every",
                                      "2"))  # fmt: skip
    assert code == 0, stderr
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["step-00000002", "step-00000004"]
    # as if cut off after step 2: the last checkpoint is step 2's
    shutil.rmtree(ck / "step-00000004")
    (ck / "latest").write_text("step-00000002\n")
    again = ["--checkpoint-dir", str(ck), "--checkpoint-every", "2", "--resume"]
    code, stdout, stderr = _cli(_args(lms, tmp_path / "resumed", *again))
    assert code == 0, stderr
    report = _report(stdout)
    assert report["resumed_from"] == 2 and [h["step"] for h in report["history"]] == [3, 4]
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k
    # a resume under 2 processes (FSDP2, the checkpoint resharded) ends at the same weights too
    shutil.rmtree(ck / "step-00000004")
    (ck / "latest").write_text("step-00000002\n")
    ranks = _two_ranks(_args(lms, tmp_path / "two", *again), tmp_path / "log")
    assert [r[0] for r in ranks] == [0, 0], ranks
    two = _weights(tmp_path / "two")
    for k in whole:
        assert torch.allclose(whole[k], two[k], rtol=1e-4, atol=1e-5), k


@pytest.mark.usefixtures("one_thread")
def test_a_checkpoint_dir_in_use_needs_resume(lms, tmp_path):
    ck = tmp_path / "ck"
    assert _cli(_args(lms, tmp_path / "a", "--checkpoint-dir", str(ck), "--steps", "1"))[0] == 0
    code, _, stderr = _cli(_args(lms, tmp_path / "b", "--checkpoint-dir", str(ck), "--steps", "1"))
    assert code == 2 and "--resume" in stderr and not (tmp_path / "b").exists()


@pytest.mark.usefixtures("one_thread")
def test_a_folder_written_by_shrink_comes_back_in_its_format(lms, tmp_path):
    """shrink's folder keeps the plan in config.json and loads through remote code: so does the distilled one."""
    shrunk, out = tmp_path / "shrunk", tmp_path / "out"
    ratios = tmp_path / "ratios.yaml"  # one layer cut, the other whole: widths no config can state (remote code)
    ratios.write_text('"model.layers.0.*": 0.5\n')
    code, _, stderr = _cli(["shrink", f"hf:{lms['teacher']}", "--ratios", str(ratios), "-o", str(shrunk), "--json"])
    assert code == 0, stderr
    code, stdout, stderr = _cli(["distill", f"hf:{shrunk}", *_args(lms, out)[2:]])
    assert code == 0, stderr
    assert (out / "config.json").read_text() == (shrunk / "config.json").read_text()
    assert (out / "slimnet_pruned.py").is_file()
    from slimnet.load.hf import from_pretrained

    start, tuned = from_pretrained(str(shrunk)), from_pretrained(str(out))
    assert {k: v.shape for k, v in tuned.state_dict().items()} == {k: v.shape for k, v in start.state_dict().items()}
    assert tuned.model.layers[0].mlp.gate_proj.weight.shape[0] < 128
    assert not torch.equal(tuned.model.layers[0].mlp.gate_proj.weight, start.model.layers[0].mlp.gate_proj.weight)


@pytest.mark.usefixtures("one_thread")
def test_progress_quiet_seed_and_clip_options(lms, tmp_path):
    text = [a for a in _args(lms, tmp_path / "a", "--progress") if a != "--json"]
    code, stdout, stderr = _cli(text)
    assert code == 0, stderr
    assert "held-out at step 0 (4 windows x 16 tokens): KL" in stderr and "distill: step 4/4 loss" in stderr
    assert "held-out at step 4" in stderr
    assert "4 held-out windows x 16 tokens: KL" in stdout and "perplexity" in stdout and "wrote" in stdout
    quiet = [a for a in _args(lms, tmp_path / "b", "--quiet") if a != "--json"]
    code, stdout, stderr = _cli(quiet)
    assert code == 0 and "distill:" not in stderr and "held-out at" not in stderr and "wrote" in stdout
    base = _report(_cli(_args(lms, tmp_path / "c"))[1])
    other = _report(_cli(_args(lms, tmp_path / "d", "--seed", "1"))[1])
    assert [h["loss"] for h in other["history"]] != [h["loss"] for h in base["history"]]  # another window order
    # a clipping norm far below the gradients' (about 1) leaves Adam's steps at about grad / eps: tiny
    code, stdout, stderr = _cli(_args(lms, tmp_path / "e", "--clip", "1e-12"))
    assert code == 0, stderr
    start, free, clipped = _weights(lms["student"]), _weights(tmp_path / "c"), _weights(tmp_path / "e")
    moved = max(float((free[k] - start[k]).abs().max()) for k in start)
    held = max(float((clipped[k] - start[k]).abs().max()) for k in start)
    assert min(h["grad_norm"] for h in base["history"]) > 0.01 and held < moved / 100


@pytest.mark.usefixtures("one_thread")
def test_tied_embeddings_stay_one_tensor_under_two_processes(lms, tmp_path):
    """SmolLM2, Llama 3.2 1B, Gemma and Qwen 0.5B tie the head to the embeddings: one tensor out, as in."""
    teacher = _llama(tmp_path / "teacher", 128, 2, seed=0, tied=True)
    for f in lms["teacher"].glob("tokenizer*"):
        shutil.copy2(f, teacher / f.name)
    student = _llama(tmp_path / "student", 64, 1, seed=1, tied=True)
    args = _args(lms, tmp_path / "out")
    args[1], args[3] = f"hf:{student}", f"hf:{teacher}"
    ranks = _two_ranks(args, tmp_path / "log")
    assert [r[0] for r in ranks] == [0, 0], ranks
    report = _report(ranks[0][1])
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    start, tuned = _weights(student), _weights(tmp_path / "out")
    assert tuned.keys() == start.keys() and "lm_head.weight" not in tuned
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not torch.equal(tuned["model.embed_tokens.weight"], start["model.embed_tokens.weight"])


# ------------------------------------------------------------------------------------------ errors
def _refused(args: list[str], out: Path, match: str) -> None:
    code, stdout, stderr = _cli(args)
    assert code == 2, (code, stdout, stderr)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0], stderr
    assert "Traceback" not in stderr and not out.exists()


@pytest.mark.usefixtures("one_thread")
def test_errors_are_one_line_and_write_nothing(lms, tmp_path):
    out = tmp_path / "out"
    other = _llama(tmp_path / "other-vocab", 64, 1, seed=2, vocab=300)
    bad = _args(lms, out)
    bad[1] = f"hf:{other}"
    _refused(bad, out, "vocabular")
    bad = _args(lms, out)
    bad[3] = f"hf:{tmp_path / 'missing'}"
    _refused(bad, out, "missing")
    short = tmp_path / "short.txt"
    short.write_text("w1 w2 w3\n")
    bad = _args(lms, out)
    bad[5] = str(short)
    _refused(bad, out, "shorter than one window")
    _refused(_args(lms, out, "--checkpoint-dir", str(tmp_path / "none"), "--resume"), out, "no checkpoint")
    _refused(_args(lms, out, "--resume"), out, "--checkpoint-dir")
    _refused(_args(lms, out, "--window", "1000"), out, "max_position_embeddings")
    _refused(_args(lms, out, "--batch-size", "3", "--loss", "mse"), out, "--loss")


@pytest.mark.slow
def test_torchrun_runs_the_command(lms, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    res = run_group([*torchrun, "-m", "slimnet", *_args(lms, tmp_path / "out")], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = _report(res.stdout)
    assert report["world_size"] == 2 and report["held_out"]["end"]["kl"] < report["held_out"]["start"]["kl"]
    transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), local_files_only=True)
