"""Everything about llama.cpp: where the pinned tree and runtime are, converting, quantizing, loading.

One llama.cpp version serves every step so converter, quantizer and runtime agree on the format:
the llama-cpp-python sdist (LLAMA_CPP_PYTHON_VERSION) vendors the full llama.cpp tree it builds.
`scripts/setup-llama-cpp.sh` builds the runtime from that sdist with safe CPU flags (see the script
for why: GCC 12 miscompiles ggml's AMX kernels) and extracts the converter
(`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py` + their `gguf-py`) into the cache, and builds
three of llama.cpp's own tools from the same tree with the same flags: `llama-imatrix`,
`llama-quantize` and `llama-perplexity`. `LLAMA_CPP_DIR` points at your own llama.cpp checkout for
the converters, `LLAMA_CPP_TOOLS_DIR` at a folder holding your own build of the tools.
Plain quantization is llama.cpp's C API (`llama_model_quantize`) in the runtime library; with an
importance matrix it is the `llama-quantize` tool, which reads the imatrix file exactly as
llama.cpp writes it (the C API takes the matrix as an in-memory array, and loading its GGUF
format is the tool's job).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtune.artifacts import atomic_file
from medtune.errors import ConfigError, ToolError

if TYPE_CHECKING:
    import llama_cpp
    import numpy as np

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # keep in sync with VERSION in scripts/setup-llama-cpp.sh
SETUP_HINT = "run `bash scripts/setup-llama-cpp.sh` with the project's virtualenv active"
CONVERTER = "convert_hf_to_gguf.py"
LORA_CONVERTER = "convert_lora_to_gguf.py"
TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")

# Types whose low-bit tensors llama.cpp refuses to make without an importance matrix
# (llama-quant.cpp: tensor_requires_imatrix); allowed only with export.imatrix on.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"})
# Types llama.cpp quantizes without looking at importance weights (8-bit rounding, plain floats):
# export.imatrix auto computes none when every requested type is one of these.
IGNORES_IMATRIX = frozenset({"Q8_0", "F16", "BF16", "F32"})
# Short names llama-quantize accepts as aliases (tools/quantize/quantize.cpp).
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


# ---- where things are ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """medtune's cache: $MEDTUNE_CACHE_DIR, else $XDG_CACHE_HOME/medtune, else ~/.cache/medtune."""
    if os.environ.get("MEDTUNE_CACHE_DIR"):
        return Path(os.environ["MEDTUNE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "medtune"


def _runtime_package_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")  # no import: loading the library is slow-ish
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def runtime_version() -> str | None:
    """Installed llama-cpp-python version, or None."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime_build_info() -> dict[str, Any] | None:
    """The flags scripts/setup-llama-cpp.sh built the runtime with (None for other builds)."""
    folder = _runtime_package_dir()
    stamp = folder / "medtune_build.json" if folder else None
    if stamp is None or not stamp.is_file():
        return None
    try:
        return json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def runtime_description() -> str:
    """One line for `medtune info`: version and build flags, or how to install."""
    version = runtime_version()
    if version is None or _runtime_package_dir() is None:
        return f"not installed: {SETUP_HINT}"
    info = runtime_build_info()
    if info is None:
        flags = "built outside medtune's set-up script (unknown flags)"
    else:
        args = info.get("cmake_args", "")
        isa = [m.group(1) for m in re.finditer(r"-DGGML_(\w+)=ON", args)]
        extra = [a for a in args.split() if not a.startswith(("-DGGML_", "-DLLAVA_BUILD", "-DCMAKE_BUILD_TYPE"))]
        native = "native" if "-DGGML_NATIVE=OFF" not in args else "GGML_NATIVE=OFF"
        flags = f"{native}, {'/'.join(isa) or 'no SIMD extensions'}, no AMX" + (f", {' '.join(extra)}" if extra else "")
    pin = "" if version == LLAMA_CPP_PYTHON_VERSION else f" (medtune pins {LLAMA_CPP_PYTHON_VERSION}: {SETUP_HINT})"
    return f"llama-cpp-python {version}: {flags}{pin}"


def converter_dir() -> Path | None:
    """The llama.cpp tree holding convert_hf_to_gguf.py: $LLAMA_CPP_DIR, else the cached pinned tree."""
    user = os.environ.get("LLAMA_CPP_DIR")
    if user:
        return Path(user).expanduser()
    return cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def find_converter() -> Path:
    """Path of convert_hf_to_gguf.py. Raises ToolError saying how to get it."""
    folder = converter_dir()
    script = folder / CONVERTER if folder else None
    if script is None or not script.is_file():
        if os.environ.get("LLAMA_CPP_DIR"):
            raise ToolError(f"LLAMA_CPP_DIR={folder} has no {CONVERTER}; point it at a llama.cpp checkout or unset it")
        raise ToolError(f"llama.cpp converter not found at {script}: {SETUP_HINT}")
    if not folder.joinpath("gguf-py", "gguf").is_dir():  # the converter's own gguf-py package
        raise ToolError(f"{folder} has no gguf-py/ next to {CONVERTER}; the converter needs its own gguf-py")
    return script


def find_lora_converter() -> Path:
    """Path of convert_lora_to_gguf.py (next to convert_hf_to_gguf.py). Raises ToolError saying how to get it."""
    folder = find_converter().parent
    script = folder / LORA_CONVERTER
    if not script.is_file():
        raise ToolError(f"{folder} has no {LORA_CONVERTER} (a tree extracted by an older set-up script): {SETUP_HINT}")
    return script


def tools_dir() -> Path | None:
    """Folder of llama-imatrix/-quantize/-perplexity: $LLAMA_CPP_TOOLS_DIR, else the set-up script's
    build for the installed runtime (same key as its wheel), else None."""
    user = os.environ.get("LLAMA_CPP_TOOLS_DIR")
    if user:
        return Path(user).expanduser()
    key = (runtime_build_info() or {}).get("key")
    if not key:
        return None
    return cache_dir() / "tools" / f"llama.cpp-tools-{LLAMA_CPP_PYTHON_VERSION}-{key}" / "bin"


def find_tool(name: str) -> Path:
    """Path of one of llama.cpp's tools (TOOLS). Raises ToolError saying how to build it."""
    folder = tools_dir()
    path = folder / name if folder else None
    if path is None or not path.is_file() or not os.access(path, os.X_OK):
        if os.environ.get("LLAMA_CPP_TOOLS_DIR"):
            raise ToolError(f"LLAMA_CPP_TOOLS_DIR={folder} has no executable {name}; point it at a llama.cpp build's bin/ or unset it")
        where = f" at {path}" if path else " (the runtime was not built by the set-up script)"
        raise ToolError(f"llama.cpp's {name} not found{where}: {SETUP_HINT} (it builds {', '.join(TOOLS)})")
    return path


def tools_available() -> bool:
    """True when all of TOOLS are found (used by tests to skip with a reason)."""
    try:
        for name in TOOLS:
            find_tool(name)
    except ToolError:
        return False
    return True


# ---- child processes that die with medtune ---------------------------------------------------------

# Linux's prctl(PR_SET_PDEATHSIG): the kernel sends the child this signal when its parent dies, even
# by kill -9, which no Python handler can catch. Loaded once here: the child may not load libraries.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int):
    """preexec_fn for a child tool: its own process group (so everything it starts can be killed at
    once) and, on Linux, SIGKILL as soon as medtune dies."""

    def setup() -> None:
        os.setpgid(0, 0)
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGKILL)

    return setup


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL a child started by run_child and everything in its process group; wait for it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_child(command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a tool (a llama.cpp converter or tool) to completion and return its output, like
    `subprocess.run(capture_output=True, text=True)`, except that it dies with medtune.

    A kill -9 of medtune kills the child too (Linux: PR_SET_PDEATHSIG), and an exception or signal
    in medtune while it runs (Ctrl-C, a timeout: subprocess.TimeoutExpired is raised) kills its
    whole process group before the exception goes on, so no tool keeps writing a temporary file
    for a stage that has already stopped.
    """
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", env=env, cwd=cwd,
        preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509 - only os/ctypes calls in the child
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        kill_process_group(process)
        raise
    finally:
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_tool(name: str, args: Sequence[str | Path], *, timeout: float | None = None, cwd: Path | None = None) -> str:
    """Run one of llama.cpp's tools and return its combined output; ToolError with its last lines on failure.

    cwd: the folder it runs in (relative paths in args are relative to it)."""
    command = [str(find_tool(name)), *(str(a) for a in args)]
    try:
        done = run_child(command, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{name} timed out after {timeout} s") from exc
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        lines = output.strip().splitlines()
        errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
        tail = "\n".join((errors or lines)[-8:])
        raise ToolError(f"{name} failed (exit {done.returncode}):\n{tail}")
    return output


def converter_description() -> str:
    """One line for `medtune info`: where the converter is, or how to install it."""
    try:
        script = find_converter()
    except ToolError as exc:
        return f"not installed: {exc}" if "not installed" not in str(exc) else str(exc)
    source = "LLAMA_CPP_DIR" if os.environ.get("LLAMA_CPP_DIR") else f"pinned to llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}"
    return f"{script} ({source})"


def tools_description() -> str:
    """One line for `medtune info`: where llama.cpp's tools are, or how to build them."""
    try:
        found = [find_tool(name) for name in TOOLS]
    except ToolError as exc:
        return f"not installed: {exc}"
    source = "LLAMA_CPP_TOOLS_DIR" if os.environ.get("LLAMA_CPP_TOOLS_DIR") else "built with the runtime's flags"
    return f"{found[0].parent} ({', '.join(TOOLS)}; {source})"


# ---- the runtime --------------------------------------------------------------------------------


def load_runtime():
    """Import llama_cpp, checking it is the pinned version and was not built with AMX kernels.

    Raises ToolError with the set-up command when it is missing, a different version (converter and
    runtime must agree), or an AMX build (those crash or crawl when compiled by GCC 12).
    """
    version = runtime_version()
    if version is None:
        raise ToolError(f"the llama.cpp runtime (llama-cpp-python) is not installed: {SETUP_HINT}")
    if version != LLAMA_CPP_PYTHON_VERSION and not os.environ.get("LLAMA_CPP_DIR"):
        raise ToolError(
            f"llama-cpp-python {version} is installed but medtune pins {LLAMA_CPP_PYTHON_VERSION} so that the "
            f"runtime matches the converter; {SETUP_HINT} (or set LLAMA_CPP_DIR to the llama.cpp tree of {version})"
        )
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise ToolError(f"the llama.cpp runtime does not load ({exc}); {SETUP_HINT}") from exc
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if "AMX_INT8 = 1" in info and runtime_build_info() is None:
        raise ToolError(
            "the installed llama-cpp-python was built with ggml's AMX kernels (a plain `pip install` on this CPU), "
            f"which GCC 12 miscompiles (segfaults, ~400x slowdown); {SETUP_HINT} to rebuild it with safe flags"
        )
    return llama_cpp


def runtime_available() -> bool:
    """True when the pinned runtime can be loaded (used by tests to skip with a reason)."""
    try:
        load_runtime()
    except ToolError:
        return False
    return True


@contextlib.contextmanager
def quiet_runtime() -> Iterator[io.StringIO]:
    """Collect llama.cpp's log lines (routed by llama-cpp-python to Python's sys.stderr)."""
    llama_cpp = load_runtime()
    from llama_cpp import _logger

    buffer = io.StringIO()
    previous = _logger.logger.level
    _logger.set_verbose(True)  # let every line reach the buffer, for error messages
    try:
        with contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        _logger.logger.setLevel(previous)
        del llama_cpp


def default_threads() -> int:
    """CPU threads for llama.cpp: all cores, but half of them when the machine is already busy.

    ggml's worker threads spin at barriers; when other processes hold the cores, a descheduled
    worker stalls the rest (measured here: 10x slower decoding with 2 threads than with 1 on 2
    busy cores). Results do not depend on the thread count.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0] >= cores - 0.5
    except OSError:
        busy = False
    return max(1, cores // 2) if busy else cores


def open_gguf(
    path: str | Path,
    *,
    n_ctx: int = 2048,
    logits_all: bool = False,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    lora_path: str | Path | None = None,
    verbose: bool = False,
) -> llama_cpp.Llama:
    """Load a GGUF file in the pinned llama.cpp runtime.

    n_ctx: context length (tokens); logits_all: keep logits for every position (needed for
    scoring a whole sequence; costs n_ctx x vocab floats); n_threads: CPU threads (default:
    default_threads()); lora_path: a GGUF LoRA adapter applied on load (scale 1). Also sets n_batch = n_ctx so one eval() call scores a whole prompt.
    Raises ToolError if the runtime is missing/unsafe or the file does not load.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"GGUF file {path} does not exist")
    if lora_path is not None and not Path(lora_path).is_file():
        raise ToolError(f"GGUF adapter {lora_path} does not exist")
    llama_cpp = load_runtime()
    threads = n_threads or default_threads()
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log if not verbose else sys.stderr):
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=min(n_ctx, 512),
                logits_all=logits_all,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers,
                lora_path=str(lora_path) if lora_path is not None else None,
                verbose=verbose,
            )
    except (ValueError, RuntimeError) as exc:
        tail = "\n".join(log.getvalue().strip().splitlines()[-5:])
        raise ToolError(f"llama.cpp cannot load {path}: {exc}" + (f"\n{tail}" if tail else "")) from exc


def sequence_logits(llm: llama_cpp.Llama, tokens: Sequence[int]) -> np.ndarray:
    """Next-token logits at every position of `tokens` (shape [len(tokens), vocab], float32).

    `llm` must come from open_gguf(..., logits_all=True) with n_ctx >= len(tokens).
    """
    import numpy as np

    if len(tokens) > llm.n_ctx():
        raise ToolError(f"sequence of {len(tokens)} tokens exceeds the context of {llm.n_ctx()} it was opened with")
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float32, copy=True)


# ---- quantization types -------------------------------------------------------------------------


def quant_type_names() -> dict[str, int]:
    """Every file type llama.cpp's quantizer knows (name -> llama_ftype), read from the pinned runtime.

    Read from the runtime's own enum (llama_cpp.LLAMA_FTYPE_*), without loading the library; falls
    back to the pinned version's list when the runtime is not installed.
    """
    folder = _runtime_package_dir()
    source = folder / "llama_cpp.py" if folder else None
    text = source.read_text(encoding="utf-8") if source and source.is_file() else ""
    found = {
        m.group(2): int(m.group(3))
        for m in re.finditer(r"^LLAMA_FTYPE_(MOSTLY|ALL)_(\w+) = (\d+)$", text, flags=re.MULTILINE)
    }
    return found or dict(_PINNED_FTYPES)


# llama.h of the pinned version (fallback when the runtime is not installed yet).
_PINNED_FTYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11,
    "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
    "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25,
    "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32,
    "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38, "NVFP4": 39, "Q1_0": 40, "Q2_0": 41,
}  # fmt: skip


def allowed_quant_types(imatrix: bool = False) -> list[str]:
    """Type names accepted in export.quant_types (without an importance matrix: minus the types that need one)."""
    names = set(quant_type_names()) - {"F32", "F16", "BF16"}
    return sorted(names if imatrix else names - NEEDS_IMATRIX) + sorted(ALIASES)


def normalize_quant_types(names: Sequence[str], outtype: str = "f16", *, imatrix: bool = False) -> list[str]:
    """Canonical upper-case type names, in order, without duplicates.

    imatrix: whether an importance matrix will be used (then the types that need one are allowed).
    Raises ConfigError naming every unknown/unsupported name and the allowed ones.
    """
    known = quant_type_names()
    problems, result = [], []
    for raw in names:
        name = ALIASES.get(str(raw).strip().upper(), str(raw).strip().upper())
        if name in NEEDS_IMATRIX and not imatrix:
            problems.append(f"{raw!r} needs an importance matrix, and export.imatrix is off: set export.imatrix to auto "
                            "(or an imatrix file) or drop it")
        elif name not in known:
            problems.append(f"{raw!r} is not a llama.cpp quantization type")
        elif name == outtype.upper():
            problems.append(f"{raw!r} is the 16-bit file export.outtype already writes")
        elif name not in result:
            result.append(name)
    if problems:
        raise ConfigError(
            "export.quant_types: " + "; ".join(problems) + f". Allowed: {', '.join(allowed_quant_types(imatrix))}"
        )
    return result


# ---- converting and quantizing ------------------------------------------------------------------


def convert_to_gguf(
    hf_dir: str | Path,
    out_path: str | Path,
    outtype: str = "f16",
    metadata: dict[str, Any] | None = None,
    *,
    timeout: float | None = None,
) -> Path:
    """Convert a Hugging Face model folder to a 16-bit GGUF with llama.cpp's own converter.

    metadata: GGUF key/values that override what the converter infers (e.g. general.name,
    general.license, general.base_model.0.name), passed through its --metadata file.
    The output appears atomically at out_path. Raises ToolError with the converter's last lines.
    """
    script = find_converter()
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if outtype not in ("f16", "bf16", "f32", "q8_0", "auto"):
        raise ConfigError(f"export.outtype: {outtype!r} is not a converter output type (f16, bf16)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # use the converter's own gguf-py, matching the runtime
    with tempfile.TemporaryDirectory(prefix="medtune-convert-") as scratch, atomic_file(out_path) as tmp:
        command = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype]
        if metadata:
            meta_file = Path(scratch) / "metadata.json"
            meta_file.write_text(json.dumps(metadata), encoding="utf-8")
            command += ["--metadata", str(meta_file)]
        try:
            done = run_child(command, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"llama.cpp converter timed out after {timeout} s on {hf_dir}") from exc
        if done.returncode != 0 or not tmp.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
            raise ToolError(f"llama.cpp converter failed on {hf_dir} (exit {done.returncode}):\n{tail}")
    return out_path


def quantize_gguf(
    src: str | Path, dst: str | Path, type_name: str, *, n_threads: int | None = None, imatrix: str | Path | None = None
) -> Path:
    """Quantize a 16-bit GGUF to `type_name` (e.g. Q4_K_M) with llama.cpp's quantizer.

    imatrix: an importance matrix file (llama-imatrix's GGUF or legacy .dat format) to weight the
    rounding errors with; then llama.cpp's `llama-quantize` tool does the work (it loads that file),
    else the runtime's llama_model_quantize. Always quantize from the 16-bit file (never re-quantize
    a quantized one). The output appears atomically at dst. Raises ConfigError for unknown types (or
    one that needs an imatrix without one), ToolError if llama.cpp fails.
    """
    (name,) = normalize_quant_types([type_name], outtype="none", imatrix=imatrix is not None)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ToolError(f"cannot quantize: {src} does not exist")
    if imatrix is not None:
        if not Path(imatrix).is_file():
            raise ToolError(f"cannot quantize with importance matrix {imatrix}: the file does not exist")
        threads = n_threads or os.cpu_count() or 1
        imatrix = Path(imatrix).resolve()
        with atomic_file(dst) as tmp:
            try:
                # Run beside the imatrix and name it bare: llama-quantize records the path as given in the
                # file (quantize.imatrix.file), and a temp folder's name would make every export differ.
                run_tool("llama-quantize", ["--imatrix", imatrix.name, src.resolve(), Path(tmp).resolve(), name, threads],
                         cwd=imatrix.parent)
            except ToolError as exc:
                raise ToolError(f"llama.cpp could not quantize {src.name} to {name} with {Path(imatrix).name}: {exc}") from exc
            if not tmp.is_file():
                raise ToolError(f"llama-quantize wrote no {name} file for {src.name}")
        return dst
    llama_cpp = load_runtime()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_type_names()[name]
    params.nthread = n_threads or os.cpu_count() or 1
    params.allow_requantize = False  # a quantized source would compound errors: refuse it
    with atomic_file(dst) as tmp, quiet_runtime() as log:
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0 or not tmp.is_file():
            errors = [line for line in log.getvalue().splitlines() if "error" in line.lower() or "failed" in line.lower()]
            raise ToolError(f"llama.cpp could not quantize {src.name} to {name}: " + ("; ".join(errors[-3:]) or f"status {status}"))
    return dst


def convert_lora_to_gguf(
    adapter_dir: str | Path, base_config_dir: str | Path, out_path: str | Path, outtype: str = "f16", *, timeout: float | None = None
) -> Path:
    """Convert a PEFT LoRA adapter folder to a GGUF adapter with llama.cpp's convert_lora_to_gguf.py.

    base_config_dir: a Hugging Face folder with the base model's config.json (the converter reads
    only the architecture from it, not the weights). The output appears atomically at out_path.
    Raises ToolError with the converter's last lines.
    """
    script = find_lora_converter()
    if outtype not in ("f16", "bf16", "f32", "q8_0"):
        raise ConfigError(f"LoRA converter output type {outtype!r} is not one of f16, bf16, f32, q8_0")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    with atomic_file(Path(out_path)) as tmp:
        command = [sys.executable, str(script), str(adapter_dir), "--base", str(base_config_dir), "--outfile", str(tmp), "--outtype", outtype]
        try:
            done = run_child(command, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"llama.cpp's LoRA converter timed out after {timeout} s on {adapter_dir}") from exc
        if done.returncode != 0 or not tmp.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
            raise ToolError(f"llama.cpp's LoRA converter failed on {adapter_dir} (exit {done.returncode}):\n{tail}")
    return Path(out_path)


# ---- llama.cpp's measuring tools ----------------------------------------------------------------


def compute_imatrix(
    model: str | Path, text_file: str | Path, out_path: str | Path, *, ctx: int, chunks: int, n_threads: int | None = None
) -> dict[str, Any]:
    """An importance matrix for `model` on the calibration text, with llama.cpp's llama-imatrix.

    Runs at most `chunks` chunks of `ctx` tokens (the tool needs at least two). Writes the GGUF
    imatrix format atomically at out_path; returns {"chunks": chunks used, "seconds": wall time}.
    Raises ToolError when the tool fails (its error lines in the message).
    """
    started = time.perf_counter()
    threads = n_threads or default_threads()
    text_file = Path(text_file).resolve()
    with atomic_file(Path(out_path)) as tmp:
        # --no-ppl: the matrix needs only the activations, not the logits of every token. Run beside the
        # text and name it bare: the matrix records it (imatrix.datasets), and the quants copy it.
        output = run_tool("llama-imatrix", [
            "-m", Path(model).resolve(), "-f", text_file.name, "-o", Path(tmp).resolve(), "--output-format", "gguf",
            "-c", ctx, "--chunks", chunks, "-t", threads, "-tb", threads, "--no-ppl",
        ], cwd=text_file.parent)
        if not tmp.is_file():
            raise ToolError(f"llama-imatrix wrote no file for {Path(model).name}:\n" + "\n".join(output.splitlines()[-8:]))
    found = re.search(r"computing over (\d+) chunks", output)
    return {"chunks": int(found.group(1)) if found else None, "seconds": round(time.perf_counter() - started, 2)}


def perplexity_kl(
    model: str | Path,
    text_file: str | Path,
    *,
    ctx: int,
    chunks: int,
    base_logits: str | Path,
    write_base: bool,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Perplexity of `model` on a text file, and KL divergence from a 16-bit reference, with
    llama.cpp's llama-perplexity (it scores the second half of every chunk of `ctx` tokens).

    write_base=True: `model` is the reference; its log-probabilities are saved to base_logits
    (--kl-divergence-base) and only its perplexity is measured. write_base=False: base_logits is
    read back and the result also has mean_kl, p99_kl (nats) and top1_agreement (llama.cpp's "same
    top p", a fraction). Every result has perplexity, bits_per_weight, chunks and positions.
    Raises ToolError when the tool fails or its report cannot be read.
    """
    threads = n_threads or default_threads()
    # -lv 4: the loader's info lines too, which carry the file's bits per weight.
    args = ["-m", model, "-c", ctx, "--chunks", chunks, "-t", threads, "-tb", threads, "--kl-divergence-base", base_logits, "-lv", 4]
    if write_base:
        args += ["-f", text_file]
    else:
        args += ["--kl-divergence"]
    output = run_tool("llama-perplexity", args)
    return parse_perplexity_output(output, with_kl=not write_base, ctx=ctx, model=Path(model).name)


def parse_perplexity_output(output: str, *, with_kl: bool, ctx: int, model: str = "model") -> dict[str, Any]:
    """The figures of a llama-perplexity report (see perplexity_kl). Raises ToolError if one is missing."""

    def number(pattern: str) -> float:
        found = re.search(pattern, output)
        if not found:
            tail = "\n".join(output.strip().splitlines()[-6:])
            raise ToolError(f"llama-perplexity's report on {model} has no line matching {pattern!r}:\n{tail}")
        return float(found.group(1))

    chunks = int(number(r"(?:computing|calculating perplexity) over (\d+) chunks"))
    result: dict[str, Any] = {
        "bits_per_weight": number(r"file size\s*=\s*[\d.]+ [MG]iB \(([\d.]+) BPW\)"),
        "chunks": chunks,
        "positions": chunks * (ctx - 1 - ctx // 2),  # the tool scores tokens ctx/2+1 .. ctx-1 of every chunk
    }
    if with_kl:
        result["perplexity"] = number(r"Mean PPL\(Q\)\s*:\s*([\d.]+)")
        result["mean_kl"] = number(r"Mean\s+KLD:\s*(-?[\d.]+)")
        result["p99_kl"] = number(r"99\.0%\s+KLD:\s*(-?[\d.]+)")
        result["top1_agreement"] = number(r"Same top p:\s*([\d.]+)") / 100.0
    else:
        result["perplexity"] = number(r"Final estimate: PPL = ([\d.]+)")
    return result
