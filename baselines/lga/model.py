"""The whole LGA model (VAE + invariance encoders + alignment net), its weights format and
inference: S_p = D_g(F(E(V_n))) (paper Sec. 3.3).

Weights folder (``save_pretrained`` / ``from_pretrained``, as diffusers models)::

    config.json          LGAConfig.to_dict() plus {"format": "marbench-lga/1", "trained": {...}}
    model.safetensors    all parameters (vae.*, align.*, ec_n.*, ec_g.*)

``from_pretrained`` takes a local folder or a Hugging Face Hub model repo id (downloaded with
``huggingface_hub.snapshot_download``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.lga.align import AlignmentNet
from baselines.lga.config import LGAConfig, hu_to_pm1, pm1_to_hu
from baselines.lga.invariance import InvarianceEncoder
from baselines.lga.vae import ARVAE

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "marbench-lga/1"


class WeightsError(FileNotFoundError):
    """LGA weights are missing or unreadable (the message says where it looked and what to do)."""


class LGAModel(nn.Module):
    """E, D_n, D_g (``vae``), F (``align``) and Ec_n, Ec_g (``ec_n``, ``ec_g``).

    ``trained`` records which stages have been trained (``{"vae": step, ...}``); inference
    needs at least the VAE and the alignment net.
    """

    def __init__(self, config: LGAConfig) -> None:
        super().__init__()
        self.config = config
        self.vae = ARVAE(config)
        self.align = AlignmentNet(config)
        self.ec_n = InvarianceEncoder(config)
        self.ec_g = InvarianceEncoder(config)
        self.trained: dict[str, int] = {}

    # ------------------------------------------------------------------------------ inference
    def prepare_inputs(self, volume_hu: torch.Tensor, mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 2k+1, H, W) HU -> [-1, 1] at ``image_size``; mask (B, 1, H, W) -> metal fraction
        at the same size."""
        s = self.config.image_size
        x = hu_to_pm1(volume_hu.float())
        if x.shape[-2:] != (s, s):
            x = resize(x, s)
        m = None
        if mask is not None:
            m = mask.float()
            if m.shape[-2:] != (s, s):
                m = F.interpolate(m, size=(s, s), mode="area")
        return x, m

    def align_latent(self, volume: torch.Tensor, mask: torch.Tensor | None,
                     implant: torch.Tensor | None) -> torch.Tensor:
        """F(E(V_n)): (B, 2k+1, S, S) in [-1, 1] -> (B, C, S/f, S/f) (posterior mean)."""
        z_n = self.vae.encode(volume).mode()
        return self.align(z_n, mask, implant)

    @torch.no_grad()
    def restore(self, volume_hu: torch.Tensor, mask: torch.Tensor | None = None,
                implant: torch.Tensor | None = None, reinsert_metal: bool = False
                ) -> torch.Tensor:
        """S_p = D_g(F(E(V_n))) in HU on the input grid.

        Args:
            volume_hu: (B, 2k+1, H, W) ordinary HU, centre slice at channel k.
            mask: (B, 1, H, W) metal mask of the centre slice (bool or fraction).
            implant: (B,) long implant-type indices (0 = none / unknown).
            reinsert_metal: copy the input's metal pixels (``mask`` > 0.5) into the output, as
                LI and NMAR do. Off by default: the paper's output is D_g's image as is, and
                GSI shows less metal blooming than the ordinary scan, so the ordinary metal
                mask covers tissue in GSI; D_g, trained on GSI, draws GSI-like metal.

        Returns:
            (B, 1, H, W) float32 HU.
        """
        h, w = volume_hu.shape[-2:]
        x, m = self.prepare_inputs(volume_hu, mask)
        out = self.vae.decode_g(self.align_latent(x, m, implant)).float()
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        out = pm1_to_hu(out)
        if reinsert_metal and mask is not None:
            k = self.config.neighbour_slices
            out = torch.where(mask > 0.5, volume_hu[:, k:k + 1].float(), out)
        return out

    # ------------------------------------------------------------------------------ weights
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``folder``; returns it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {**self.config.to_dict(), "format": FORMAT, "trained": dict(self.trained)}
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT})
        return folder

    @classmethod
    def from_pretrained(cls, source: str | Path, revision: str | None = None,
                        map_location: str | torch.device = "cpu") -> LGAModel:
        """Load from a folder written by :meth:`save_pretrained`, or a Hub model repo id."""
        from safetensors.torch import load_file

        folder = resolve_weights(source, revision)
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        if meta.pop("format", None) != FORMAT:
            raise WeightsError(f"{folder / CONFIG_NAME}: not an LGA weights config "
                               f"(expected format {FORMAT!r})")
        trained = meta.pop("trained", {})
        config = LGAConfig.from_dict(meta, str(folder / CONFIG_NAME))
        model = cls(config)
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsError(f"{folder / WEIGHTS_NAME}: does not match its config.json: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.trained = {str(k): int(v) for k, v in trained.items()}
        return model


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): area when shrinking (no aliasing), else bilinear."""
    if x.shape[-1] >= size and x.shape[-2] >= size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resolve_weights(source: str | Path, revision: str | None = None) -> Path:
    """A local weights folder, or the snapshot of a Hub model repo id; :class:`WeightsError`
    when neither has ``config.json`` + ``model.safetensors``."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise WeightsError(f"{path}: not an LGA weights folder (needs {CONFIG_NAME} and "
                               f"{WEIGHTS_NAME}; write one with train_lga or save_pretrained)")
        return path
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return resolve_weights(Path(snapshot_download(
                text, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])))
        except WeightsError:
            raise
        except Exception as e:  # offline, unknown repo, auth
            raise WeightsError(f"LGA weights {text!r}: no such folder, and downloading it as a "
                               f"Hub model repo failed: {type(e).__name__}: {e}") from e
    raise WeightsError(f"LGA weights {text!r}: no such folder (nor a Hub repo id 'org/name')")


def weights_sha256(folder: Path) -> str:
    """sha256 of ``model.safetensors`` (recorded in results files)."""
    h = hashlib.sha256()
    with open(folder / WEIGHTS_NAME, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def count_parameters(module: nn.Module) -> dict[str, Any]:
    """Parameter counts per part (for logs and the README)."""
    return {name: sum(p.numel() for p in m.parameters())
            for name, m in module.named_children()}
