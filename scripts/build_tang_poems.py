#!/usr/bin/env python3
"""Build the shipped Tang-poem corpus ``aigc/data/builtin/tang-poems.jsonl.xz``.

What it does
    Reads the 57,607 poems of the Complete Tang Poems (全唐诗) from the npm
    package ``chinese-poetry@2.0.1`` (files ``package/dist/quantangshi/
    poet.tang.<N>.json``, read straight out of the tgz), converts title, author
    and lines from traditional to simplified Chinese with OpenCC ``t2s``, and
    writes one JSON object per line::

        {"author": ..., "text": title + "\\n" + "\\n".join(lines), "title": ...}

    with keys sorted and ``ensure_ascii=False``. Lines are whitespace-stripped
    and empty lines dropped (so a poem with an empty title has no title line);
    poems with an empty body are dropped, as are exact duplicate documents
    (same title, author and text). Nothing else is altered. Files are read in
    numeric order of <N> and poems in file order, so the output is
    deterministic. The result is compressed with xz (preset 9 |
    PRESET_EXTREME) and written atomically.

Source and licence
    https://www.npmjs.com/package/chinese-poetry (version 2.0.1), data from the
    chinese-poetry project https://github.com/chinese-poetry/chinese-poetry,
    MIT License, Copyright (c) 2016 JackeyGao. The licence text is shipped
    next to the data as ``aigc/data/builtin/tang-poems.LICENSE.txt``.

Rebuild (from the repository root; needs ``npm`` and the ``opencc`` package)::

    python scripts/build_tang_poems.py

or, with an already downloaded tarball::

    python scripts/build_tang_poems.py --tgz chinese-poetry-2.0.1.tgz
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "chinese-poetry@2.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "aigc" / "data" / "builtin" / "tang-poems.jsonl.xz"
MEMBER_RE = re.compile(r"^package/dist/quantangshi/poet\.tang\.(\d+)\.json$")
EXPECTED_POEMS = 57_607
MAX_BYTES = 8 * 1024 * 1024  # 8 MB ceiling for the shipped file
XZ_PRESET = 9 | lzma.PRESET_EXTREME


def npm_pack(dest: Path) -> Path:
    """Run ``npm pack`` into *dest* and return the path of the tgz."""
    try:
        proc = subprocess.run(
            ["npm", "pack", PACKAGE, "--pack-destination", str(dest)],
            capture_output=True, text=True, check=False,
        )
    except FileNotFoundError:
        sys.exit("error: npm not found; install Node.js/npm or pass --tgz PATH")
    tgzs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or len(tgzs) != 1:
        errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        msg = errors[0] if errors else "no tgz produced"
        sys.exit(f"error: `npm pack {PACKAGE}` failed: {msg}")
    return tgzs[0]


def make_converter():
    try:
        import opencc
    except ImportError:
        sys.exit("error: the `opencc` package is required (pip install opencc)")
    return opencc.OpenCC("t2s").convert


def read_poems(tgz: Path):
    """Yield raw poem dicts from the tgz in a stable order."""
    try:
        tar = tarfile.open(tgz, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        sys.exit(f"error: cannot read {tgz}: {exc}")
    with tar:
        members = []
        for m in tar.getmembers():
            match = MEMBER_RE.match(m.name)
            if match and m.isfile():
                members.append((int(match.group(1)), m))
        if not members:
            sys.exit(f"error: no quantangshi/poet.tang.*.json files in {tgz}")
        for _, m in sorted(members, key=lambda im: im[0]):
            yield from json.load(tar.extractfile(m))


def build(tgz: Path, out: Path) -> None:
    t2s = make_converter()
    read = kept = dropped_empty = dropped_dup = total_chars = 0
    seen: set[str] = set()
    lines_out: list[str] = []

    for poem in read_poems(tgz):
        read += 1
        title = t2s((poem.get("title") or "").strip())
        author = t2s((poem.get("author") or "").strip())
        body = [t2s(s) for p in poem.get("paragraphs") or [] if (s := p.strip())]
        if not body:
            dropped_empty += 1
            continue
        # An empty title is an empty line, so it is dropped like any other.
        text = "\n".join([title, *body] if title else body)
        line = json.dumps({"title": title, "author": author, "text": text},
                          ensure_ascii=False, sort_keys=True)
        if line in seen:
            dropped_dup += 1
            continue
        seen.add(line)
        lines_out.append(line)
        kept += 1
        total_chars += len(text)

    data = lzma.compress(("\n".join(lines_out) + "\n").encode("utf-8"),
                         format=lzma.FORMAT_XZ, preset=XZ_PRESET)
    size_mb = len(data) / 1e6

    print(f"poems read:            {read}" +
          ("" if read == EXPECTED_POEMS else f"  (expected {EXPECTED_POEMS})"))
    print(f"poems kept:            {kept}")
    print(f"dropped, empty body:   {dropped_empty}")
    print(f"dropped, exact dup:    {dropped_dup}")
    print(f"text characters:       {total_chars}")
    print(f"compressed size:       {size_mb:.2f} MB ({len(data)} bytes)")

    if len(data) > MAX_BYTES:
        sys.exit(f"error: compressed size {len(data)} bytes exceeds the "
                 f"{MAX_BYTES}-byte limit; nothing written")

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tgz", type=Path,
                    help=f"already downloaded `npm pack {PACKAGE}` tarball "
                         "(default: run npm pack into a temp dir)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="output .jsonl.xz path (default: %(default)s)")
    args = ap.parse_args()

    if args.tgz is not None:
        if not args.tgz.is_file():
            sys.exit(f"error: tgz not found: {args.tgz}")
        build(args.tgz, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(npm_pack(Path(tmp)), args.out)


if __name__ == "__main__":
    main()
