"""Music on the command line: `aigc sample` of a music model (ABC to the terminal; --out .abc, .mid, .wav
or a piano-roll .png) and `aigc eval --task music` (the model beside held-out tunes and a Markov chain)."""

from __future__ import annotations

import sys
from pathlib import Path

from aigc.atomic import check_target, write_json
from aigc.cli.common import check_seed, eval_out, model_and_config, sampling_overrides
from aigc.data.abc import header_text, parse_header
from aigc.data.music import TERMS
from aigc.data.shards import split_corpus
from aigc.data.sources import is_music_source
from aigc.errors import AigcError
from aigc.evaluate.music import BarIndex, markov_tunes, music_metrics, tune_features
from aigc.generate.music import MUSIC_OUTPUTS, compose, tune_prompt, write_tune
from aigc.version import __version__


def wants_music(model, out: str | None) -> bool:
    """A music model (``content = "abc"``) writing tunes (not to .txt or .jsonl).

    Raises:
        AigcError: an output only a tune can fill (.abc .mid .wav .ogg) asked of a text model.
    """
    suffix = Path(out).suffix.lower() if out else ""
    if model.defaults.content != "abc" and suffix in (".abc", ".mid", ".wav", ".ogg"):
        raise AigcError(f"--out {out}: tunes come from a music model (its generation_config.json says content = "
                        f"\"abc\"); this one writes text")
    return model.defaults.content == "abc" and suffix not in (".txt", ".jsonl")


def sample_music(model, args) -> int:
    """``args.n`` tunes after ``args.prompt``: printed as ABC, and with ``--out`` written by suffix (tune i of
    several to NAME-i.SUFFIX). A tune that does not parse is reported on stderr and not written.

    Returns:
        the exit code: 0 when every tune parsed, 1 when some did not, 2 when none did.
    """
    n = 1 if args.n is None else args.n
    if not 1 <= n <= 1000:
        raise AigcError(f"--n {n}: expected 1 to 1000 tunes")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix.lower() not in MUSIC_OUTPUTS:
            raise AigcError(f"--out {out}: a tune is written as {', '.join(MUSIC_OUTPUTS)} (ABC, MIDI, audio, "
                            f"piano roll); not {out.suffix or 'a name without a suffix'}")
        if not out.parent.is_dir():
            raise AigcError(f"--out {out}: the folder {out.parent} does not exist")
        if out.suffix.lower() in (".wav", ".ogg"):
            from aigc.generate.music import soundfont
            soundfont()  # FluidSynth and a soundfont, checked before any tune is made
    check_seed(args.seed)
    targets = [out if n == 1 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(n)] if out else []
    for t in targets:
        check_target(t)
    prompt = tune_prompt(args.prompt)
    settings = model.settings(**sampling_overrides(args))
    written = failed = 0
    for i, tune in enumerate(compose(model, prompt, n, args.seed, settings)):
        if n > 1:
            print(f"--- tune {i + 1}/{n}", flush=True)
        print(tune["abc"].rstrip("\n"), flush=True)
        if tune["error"]:
            failed += 1
            print(f"tune {i + 1} does not parse: {tune['error']}; not written", file=sys.stderr)
            continue
        if targets:
            info = {"generator": f"aigc {__version__}", "model": str(model.folder), "seed": tune["seed"],
                    "prompt": prompt, "abc": tune["abc"]}
            write_tune(tune["tune"], targets[i], info)
            written += 1
            print(f"wrote {targets[i]}: {tune['tune'].notes} notes, {tune['tune'].seconds:.1f} s", file=sys.stderr)
    return 0 if not failed else (1 if failed < n else 2)


def eval_music(args, overrides: list[str]) -> int:
    """`aigc eval RUN --task music`: ``args.samples`` tunes, each after the header of a held-out tune, scored
    beside those held-out tunes (the ceiling) and a first-order Markov chain's tunes (the floor)."""
    if args.model is None:
        raise AigcError("eval --task music needs a run or model folder")
    if args.samples < 1:
        raise AigcError(f"--samples {args.samples}: expected at least 1")
    check_seed(args.seed)
    model, cfg, run_dir = model_and_config(args, overrides)
    if cfg.is_image or not is_music_source(cfg.data):
        raise AigcError(f"--task music: the run's data is not music (data.dataset = 'folk-abc', or data.format = "
                        f"'music'); got {cfg.data.dataset or cfg.data.source!r}")
    train, val = split_corpus(cfg.data, progress=not args.quiet)
    if len(val) < 2:
        raise AigcError(f"the val split holds {len(val)} tune; need at least 2 (raise data.val_fraction)")
    real = val[:min(args.samples, len(val) // 2)]  # scored as samples; the rest is the reference
    reference = [f for f in (tune_features(t) for t in val[len(real):]) if f is not None]
    if not reference:
        raise AigcError("no held-out reference tune parses")
    prompts = [header_text(parse_header(real[i % len(real)], "tune")[0]) for i in range(args.samples)]
    settings = model.settings(**sampling_overrides(args))
    tunes = [compose(model, p, 1, args.seed + i, settings)[0]["abc"] for i, p in enumerate(prompts)]
    index = BarIndex(train)
    rows = {"model": music_metrics(tunes, reference, index, not args.quiet, "scoring the model's tunes"),
            "held-out tunes (ceiling)": music_metrics(real, reference, index, not args.quiet, "scoring held-out"),
            "Markov chain (floor)": music_metrics(markov_tunes(train, prompts, args.seed), reference, index,
                                                  not args.quiet, "scoring the Markov chain")}
    results = {"model": str(model.folder), "task": "music", "samples": args.samples, "seed": args.seed,
               "reference_tunes": len(reference), "train_tunes": len(train), "rows": rows, "terms": TERMS,
               "examples": tunes[:3]}
    out = eval_out(args.out, run_dir or model.folder, "eval-music.json")
    write_json(out, results)
    names = list(rows)
    print(f"{'metric':<28}" + "".join(f"{n:>26}" for n in names))
    for key in rows["model"]:
        cells = "".join(f"{rows[n][key]:>26.3f}" if isinstance(rows[n][key], float) else f"{rows[n][key]:>26}"
                        for n in names)
        print(f"{key:<28}{cells}")
    print(f"written to {out}")
    return 0


__all__ = ["eval_music", "sample_music", "wants_music"]
