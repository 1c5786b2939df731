"""``slimnet eval-lm``: perplexity of a causal LM on a text, the window length stated with the number.

A thin shell over :func:`slimnet.measure.perplexity.perplexity` (how windows are cut and scored is documented
there). The text is ``--text FILE`` or a built-in one (``builtin:shakespeare-eval``, see
:mod:`slimnet.llm.texts`); it is tokenised with the model folder's tokenizer or ``--tokenizer DIR`` (a pruned
folder written by ``shrink``, or a ``.pt`` file, has none: give the original model's folder).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

import typer

from ..errors import SlimnetError
from ..load.spec import check_model, parse_spec
from .common import AsJson, Debug, Model, ShowProgress, TrustPickle, emit_json, err, guarded, say
from .data import tokenizer_folder

TextOption = Annotated[
    str,
    typer.Option(
        "--text",
        help="UTF-8 text to measure on (tokenised whole), or builtin:shakespeare-eval (held out from "
        "builtin:shakespeare-calib).",
        show_default=False,
    ),
]
Window = Annotated[int, typer.Option("--window", help="Tokens per window (each window runs alone).")]
Stride = Annotated[
    Optional[int],
    typer.Option("--stride", help="Tokens between window starts (default: --window, non-overlapping windows)."),
]
MaxWindows = Annotated[
    Optional[int], typer.Option("--max-windows", help="Measure on the first K windows only (default: all).")
]
Tokenizer = Annotated[
    Optional[str],
    typer.Option("--tokenizer", help="A folder with the tokenizer (default: MODEL's folder, if it has one)."),
]


def eval_lm(
    model: Model,
    text: TextOption,
    window: Window = 512,
    stride: Stride = None,
    max_windows: MaxWindows = None,
    tokenizer: Tokenizer = None,
    trust_pickle: TrustPickle = False,
    as_json: AsJson = False,
    progress: ShowProgress = None,
    debug: Debug = False,
) -> None:
    """Perplexity of a causal language model on a text: exp(mean NLL per token) over windows of --window tokens
    (non-overlapping unless --stride is smaller; each token scored once)."""
    with guarded(debug):
        from ..llm.texts import resolve_text  # lazy: CLI start-up

        check_model(model)
        text_path = resolve_text(text)
        folder = tokenizer or tokenizer_folder(model)
        if folder is None:
            raise SlimnetError(
                f"{model} has no tokenizer files (tokenizer.json / tokenizer_config.json): give --tokenizer DIR, "
                "e.g. the original model's folder"
            )
        from ..load.data import load_tokenizer  # lazy: CLI start-up
        from ..load.loader import load_model  # lazy: CLI start-up
        from ..measure import perplexity as ppl  # lazy: CLI start-up

        content = ppl.read_text(text_path)
        ppl.windows(0, window, stride, max_windows)  # the options' own checks, before the model loads
        tok = load_tokenizer(folder)
        start = time.perf_counter()
        loaded = load_model(model, trust_pickle=trust_pickle)
        ppl.check_causal_lm(loaded.model, model)
        ids = ppl.tokenize(content, tok)
        show = err.is_terminal if progress is None else progress
        result = ppl.perplexity(
            loaded.model,
            ids,
            window=window,
            stride=stride,
            max_windows=max_windows,
            progress=_progress if show else None,
        )
        report: dict[str, Any] = {
            "model": model,
            "kind": parse_spec(model).kind,
            "text": text,
            "text_path": text_path,
            "tokenizer": folder,
            **result,
            "total_seconds": time.perf_counter() - start,
        }
        if as_json:
            emit_json(report)
            return
        say(
            f"perplexity {report['perplexity']:.3f} (mean NLL {report['mean_nll']:.4f} nats/token) of {model} on "
            f"{text}: {report['windows']} window{'s' * (report['windows'] != 1)} of {window} tokens, stride "
            f"{report['stride']} ({report['windows_available']} in the text), {report['tokens']} tokens scored of "
            f"{report['text_tokens']}; {report['seconds']:.1f} s"
        )


def _progress(done: int, total: int) -> None:
    err.print(f"eval-lm: window {done}/{total}", highlight=False)
