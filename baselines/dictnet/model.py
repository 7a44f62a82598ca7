"""The unfolded dictionary network for CT metal artifacts, with three filter
parameterisations (``dicdnet``, ``oscnet``, ``oscnet_plus``).

Model: on the non-metal region (mask ``I = 1 - metal``), the artifact-affected image is the
artifact-free image plus an artifact layer, ``I * X_ma = I * (X + A)``, and the artifact
layer is a convolutional dictionary code ``A = sum_k C_k (x) M_k`` with sparse maps M.
Proximal gradient steps on

    min_{M, X}  || I * (X_ma - X - C (x) M) ||^2 + lambda g(M) + mu h(X)

are unrolled for S stages; the proximal operators of g and h are learned ResNets
(``prox_m``, ``prox_x``, each ``res_blocks`` residual blocks conv3-BN-ReLU-conv3-BN), and X
carries ``num_q`` auxiliary channels. Stage s:

    M_s = prox_m[s](M_{s-1} - eta_m[s] / 10 * C^T (x) (I * (C (x) M_{s-1} + c - (X_ma - X_{s-1}))))
    A_s = C (x) M_s + c
    X_s = prox_x[s]((1 - eta_x[s] I / 10) X_{s-1} + eta_x[s] I / 10 (X_ma - A_s))

initialised by X_0 = prox_x0([X_LI, C_q (x) X_LI]) and M_1 = prox_m[0](C_0^T (x)
relu(I * (X_ma - X_0) - tau)); a last ``prox_x`` refines X_S. Data enter only through
``I * (...)``: inside the metal the image is never compared with X_ma.

Filters C (``n_filters`` maps, ``kernel_size`` px):

* ``dicdnet``: free filters, divided by ``filter_div`` (10);
* ``oscnet``: ``num_m`` filters x ``num_rot`` orientations from a rotated 2-D Fourier basis
  (:mod:`baselines.dictnet.filters`), one coefficient vector per filter shared by its
  orientations (``num_m`` x p^2 parameters);
* ``oscnet_plus``: the coefficients are predicted per image by a small network from the
  current X and X_ma (whose metal pixels are replaced by X, so that metal values do not
  dominate the pooled statistics), after every stage.

Loss (as published), on the non-metal region, Y the target:
``x_l2 * (sum_s stage_weight * MSE(X_s, Y) + MSE(X_final, Y) + stage_weight * MSE(X_0, Y))``
``+ x_l1 * (the same with summed absolute errors)``
``+ a_l1 * (sum_s stage_weight * ||A_s - (X_ma - Y)||_1 + ||A_S - (X_ma - Y)||_1)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from baselines.deep_common import DeepModel, TrainConfig
from baselines.dictnet.filters import (
    CoefficientNet,
    SharedCoefficients,
    filters_from,
    fourier_basis,
    init_free_filters,
)
from baselines.errors import OptionError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
VARIANTS = ("dicdnet", "oscnet", "oscnet_plus")


@dataclass
class DictNetConfig(TrainConfig):
    """Every setting of the dictionary networks. Defaults = OSCNet as published
    (``oscnet-paper``): 10 stages, 4 filters x 8 orientations of 9 x 9 px from a 5 x 5
    Fourier basis, 32 auxiliary channels, 3 residual blocks per proximal net, HU mapped to
    [0, 255], 64 px patches in batches of 16, Adam (0.5, 0.999) at 2e-4 halved every 30
    epochs of 4000 batches, 200 epochs."""

    config_dir: ClassVar[Path] = CONFIG_DIR
    default_name: ClassVar[str] = "oscnet-paper"

    variant: str = "oscnet"           # "dicdnet", "oscnet" or "oscnet_plus"
    stages: int = 10                  # S (initialisation + S - 1 iterations)
    num_m: int = 4                    # filters (dicdnet: all filters; osc*: per orientation)
    num_rot: int = 8                  # orientations (osc*)
    num_q: int = 32                   # auxiliary channels of X
    res_blocks: int = 3               # residual blocks per proximal net
    kernel_size: int = 9
    frequencies: int = 5              # Fourier frequencies per axis (osc*)
    eta_m: float = 1.0                # initial step sizes (used divided by 10)
    eta_x: float = 5.0
    tau: float = 1.0                  # initial threshold of the first artifact estimate
    tau_m: float = 0.5                # initial soft threshold of every prox_m
    filter_div: float = 1.0           # dictionary filters are divided by this
    coef_hidden: int = 6              # oscnet_plus: width of the coefficient network
    stage_weight: float = 0.1         # loss weight of intermediate stages and of X_0
    x_l2: float = 1.0
    x_l1: float = 5e-4
    a_l1: float = 5e-4
    # data / optimisation defaults of the published recipe
    scale: float = 255.0
    patch_size: int = 64
    batch_size: int = 16
    lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.5, 0.999)
    max_steps: int = 800_000
    lr_schedule: str = "step"
    lr_decay_every: int = 120_000
    val_every: int = 4000
    checkpoint_every: int = 4000

    def validate(self, where: str = "config") -> DictNetConfig:
        super().validate(where)
        if self.variant not in VARIANTS:
            raise self.bad(where, "variant", f"must be one of {', '.join(VARIANTS)}, got "
                           f"{self.variant!r}")
        for key in ("stages", "num_m", "num_rot", "num_q", "res_blocks", "coef_hidden",
                    "frequencies"):
            if getattr(self, key) < 1:
                raise self.bad(where, key, "must be >= 1")
        if self.stages < 2:
            raise self.bad(where, "stages", "must be >= 2 (initialisation + iterations)")
        if self.kernel_size % 2 == 0:
            raise self.bad(where, "kernel_size", f"must be odd, got {self.kernel_size}")
        if self.filter_div <= 0:
            raise self.bad(where, "filter_div", "must be > 0")
        return self

    @property
    def n_filters(self) -> int:
        """Channels of M: num_m (dicdnet) or num_m * num_rot (osc*)."""
        return self.num_m if self.variant == "dicdnet" else self.num_m * self.num_rot


def load_dictnet_config(config: Any = None, overrides: dict[str, Any] | None = None
                        ) -> DictNetConfig:
    """A :class:`DictNetConfig` from a shipped name (``oscnet-cpu``), a YAML path, a dict or
    ``None`` (OSCNet as published), with ``overrides`` last."""
    return DictNetConfig.load(config, overrides)


class ProxNet(nn.Module):
    """``blocks`` residual blocks x <- relu(x + BN(conv(relu(BN(conv(x)))))) on ``channels``,
    then an optional learned per-channel soft threshold relu(x - tau)."""

    def __init__(self, channels: int, blocks: int, tau: float | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
            for _ in range(blocks))
        self.tau = None if tau is None else nn.Parameter(torch.full((1, channels, 1, 1), tau))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = F.relu(x + block(x))
        return x if self.tau is None else F.relu(x - self.tau)


@dataclass
class Unrolled:
    """Everything one forward pass produces (model units, (B, 1, H, W) images)."""

    x0: torch.Tensor
    xs: list[torch.Tensor]          # X_1 .. X_S, then the refined final X
    artifacts: list[torch.Tensor]   # A_1 .. A_S
    coefficients: list[torch.Tensor]  # oscnet_plus: (B, M, R) per stage; else empty


class DictNet(DeepModel):
    """The unfolded dictionary network (see the module doc)."""

    family = "dictnet"
    config_class = DictNetConfig

    def __init__(self, config: DictNetConfig) -> None:
        super().__init__(config)
        c = config
        g = torch.Generator().manual_seed(c.seed)
        k, q = c.n_filters, c.num_q
        self.c_q = nn.Parameter(torch.full((q, 1, 3, 3), 1.0 / 9.0))  # local mean of X_LI
        self.prox_x0 = ProxNet(q + 1, c.res_blocks)
        self.prox_x = nn.ModuleList(ProxNet(q + 1, c.res_blocks) for _ in range(c.stages))
        self.prox_m = nn.ModuleList(ProxNet(k, c.res_blocks, c.tau_m) for _ in range(c.stages))
        self.prox_x_last = ProxNet(q + 1, c.res_blocks)
        self.tau = nn.Parameter(torch.tensor([c.tau]))
        self.eta_m = nn.Parameter(torch.full((c.stages - 1,), c.eta_m))
        self.eta_x = nn.Parameter(torch.full((c.stages,), c.eta_x))
        self.c0 = nn.Parameter(init_free_filters(k, c.kernel_size, g))
        if c.variant == "dicdnet":
            self.dictionary = nn.Parameter(init_free_filters(k, c.kernel_size, g))
        else:
            basis = fourier_basis(c.kernel_size, c.frequencies, c.num_rot)
            if c.variant == "oscnet":
                self.shared = SharedCoefficients(c.num_m, basis, g)
            else:
                self.register_buffer("basis", basis, persistent=False)
                self.coef_net = CoefficientNet(c.num_m, basis.shape[1], c.coef_hidden)
            self.bias = nn.Parameter(torch.zeros(1))

    # ------------------------------------------------------------------------------ filters
    def _filters(self, x: torch.Tensor, x_ma: torch.Tensor, keep: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(filters (1 or B, K, k, k) already divided by filter_div, coefficients or None)."""
        c = self.config
        if c.variant == "dicdnet":
            return self.dictionary / c.filter_div, None
        if c.variant == "oscnet":
            return self.shared() / c.filter_div, None
        seen = keep * x_ma + (1 - keep) * x
        coef = self.coef_net(x, seen)
        return filters_from(coef, self.basis) / c.filter_div, coef

    def _synth(self, m: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        """C (x) M: (B, K, H, W) -> (B, 1, H, W), shared (1, K, k, k) or per-image filters."""
        pad = self.config.kernel_size // 2
        bias = getattr(self, "bias", None)
        if filt.shape[0] == 1:
            a = F.conv2d(m, filt, padding=pad)
        else:
            b, k, h, w = m.shape
            a = F.conv2d(m.reshape(1, b * k, h, w), filt, padding=pad, groups=b).reshape(
                b, 1, h, w)
        return a if bias is None else a + bias

    def _analyse(self, r: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        """C^T (x) R: (B, 1, H, W) -> (B, K, H, W)."""
        pad = self.config.kernel_size // 2
        if filt.shape[0] == 1:
            return F.conv_transpose2d(r, filt, padding=pad)
        b, _, h, w = r.shape
        return F.conv_transpose2d(r.reshape(1, b, h, w), filt, padding=pad, groups=b).reshape(
            b, -1, h, w)

    def filter_bank(self, x: torch.Tensor | None = None, x_ma: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """The dictionary before division by ``filter_div``: (1, K, k, k), or (B, K, k, k) for
        oscnet_plus, which predicts it from the images ``x`` and ``x_ma`` (B, 1, H, W)."""
        c = self.config
        if c.variant == "dicdnet":
            return self.dictionary
        if c.variant == "oscnet":
            return self.shared()
        if x is None or x_ma is None:
            raise OptionError("oscnet_plus filters depend on the image: pass x and x_ma")
        return filters_from(self.coef_net(x, x_ma), self.basis)

    # ------------------------------------------------------------------------------ forward
    def unroll(self, x_ma: torch.Tensor, li: torch.Tensor, metal: torch.Tensor) -> Unrolled:
        """Run the S stages on (B, 1, H, W) model-unit images and a bool metal mask."""
        c = self.config
        keep = (~metal.bool()).to(x_ma.dtype)
        pad = c.kernel_size // 2
        xq = self.prox_x0(torch.cat([li, F.conv2d(li, self.c_q, padding=1)], dim=1))
        x0, q = xq[:, :1], xq[:, 1:]
        # First artifact estimate: the thresholded non-metal residual, coded by C_0.
        resid = F.relu(keep * (x_ma - x0) - self.tau)
        m = self.prox_m[0](F.conv_transpose2d(resid, self.c0 / 10.0, padding=pad))
        filt, coef = self._filters(x0, x_ma, keep)
        coefs = [coef] if coef is not None else []
        a = self._synth(m, filt)
        x = x0
        xs, arts = [], []
        for s in range(c.stages):
            if s > 0:
                grad = keep * (a - (x_ma - x))
                m = self.prox_m[s](m - self.eta_m[s - 1] / 10.0 * self._analyse(grad, filt))
                a = self._synth(m, filt)
            eta = self.eta_x[s] / 10.0
            x_mid = (1 - eta * keep) * x + eta * keep * (x_ma - a)
            xq = self.prox_x[s](torch.cat([x_mid, q], dim=1))
            x, q = xq[:, :1], xq[:, 1:]
            xs.append(x)
            arts.append(a)
            if c.variant == "oscnet_plus" and s < c.stages - 1:
                filt, coef = self._filters(x, x_ma, keep)
                coefs.append(coef)
        xs.append(self.prox_x_last(xq)[:, :1])
        return Unrolled(x0=x0, xs=xs, artifacts=arts, coefficients=coefs)

    def restore_units(self, x_ma: torch.Tensor, li: torch.Tensor, metal: torch.Tensor
                      ) -> torch.Tensor:
        return self.unroll(x_ma, li, metal).xs[-1]

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        x_ma, y, metal = batch["ordinary"], batch["target"], batch["mask"]
        out = self.unroll(x_ma, batch["li"], metal)
        keep = (~metal.bool()).to(x_ma.dtype)
        y_k, a_true = keep * y, keep * (x_ma - y)
        w = c.stage_weight

        def l2(x: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(keep * x, y_k)

        def l1(x: torch.Tensor) -> torch.Tensor:
            return (keep * x - y_k).abs().sum()

        stages = out.xs[:-1]
        loss_l2 = w * sum(l2(x) for x in stages) + l2(out.xs[-1]) + w * l2(out.x0)
        loss_l1 = w * sum(l1(x) for x in stages) + l1(out.xs[-1]) + w * l1(out.x0)
        loss_a = w * sum((keep * a - a_true).abs().sum() for a in out.artifacts) + \
            (keep * out.artifacts[-1] - a_true).abs().sum()
        loss = c.x_l2 * loss_l2 + c.x_l1 * loss_l1 + c.a_l1 * loss_a
        return {"loss": loss, "l2_x": loss_l2.detach(), "l1_x": loss_l1.detach(),
                "l1_a": loss_a.detach()}


def build_dictnet(config: DictNetConfig) -> DictNet:
    return DictNet(config)


#: A trained :class:`DictNet` from a weights folder or Hub repo id.
load_dictnet = DictNet.from_pretrained
